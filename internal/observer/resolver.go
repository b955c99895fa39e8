package observer

import (
	"net/netip"
	"sort"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// EndpointInfo is what the observer shows of an endpoint (a pod).
type EndpointInfo struct {
	ID        uint32 // local endpoint ID; 0 for pods on other nodes
	Identity  identity.NumericIdentity
	Namespace string
	PodName   string
	// Labels in Cilium's "source:key=value" form, sorted (see PodLabels).
	// Flows share the slice: the resolver must not mutate it afterwards.
	Labels []string
}

// Resolver gives the metadata a flow carries beyond the datapath event. The
// agent implements it over its endpoint, ipcache, identity and policy
// state. Every method is called on the event path, concurrently with
// updates: implementations must be safe for concurrent use and cheap (map
// lookups), and return ok=false or nil when they do not know.
type Resolver interface {
	// EndpointByID returns a local endpoint.
	EndpointByID(id uint32) (EndpointInfo, bool)
	// EndpointByIP returns the pod (local or remote) owning an address.
	EndpointByIP(ip netip.Addr) (EndpointInfo, bool)
	// IdentityLabels returns the labels of an identity ("k8s:app=x",
	// "reserved:world", "cidr:10.0.0.0/8"), sorted.
	IdentityLabels(id identity.NumericIdentity) []string
	// RulePolicies returns the policies behind the datapath rule id.
	RulePolicies(ruleID uint32) []resolved.PolicyRef
	// SelectingPolicies returns the policies that select the endpoint in a
	// direction: the ones responsible for a default deny there.
	SelectingPolicies(endpointID uint32, dir resolved.Direction) []resolved.PolicyRef
}

// MatchTyper is an optional extension of Resolver: a resolver that also
// implements it gives the match type of a datapath rule id (what of the
// packet the deciding entry named), which policy-verdict flows carry as
// policy_match_type ("policy-verdict:L3-L4" in hubble). Without it, every
// flow has match type none. Same rules as Resolver: concurrent-safe, cheap,
// event.MatchNone when unknown.
type MatchTyper interface {
	RuleMatchType(ruleID uint32) event.MatchType
}

// NamespaceLabel is the label Kubernetes-derived identities carry for the
// pod's namespace, as in Cilium.
const NamespaceLabel = "io.kubernetes.pod.namespace"

// PodLabels formats a pod's labels the way Cilium shows them: "k8s:key=value"
// for every label plus the namespace label, sorted. Resolvers use it to fill
// EndpointInfo.Labels.
func PodLabels(namespace string, labels map[string]string) []string {
	out := make([]string, 0, len(labels)+1)
	for k, v := range labels {
		out = append(out, "k8s:"+k+"="+v)
	}
	if _, ok := labels[NamespaceLabel]; !ok && namespace != "" {
		out = append(out, "k8s:"+NamespaceLabel+"="+namespace)
	}
	sort.Strings(out)
	return out
}

// reservedLabels are the labels of reserved identities when the resolver has
// none (Cilium shows "reserved:world" and so on).
func reservedLabels(id identity.NumericIdentity) []string {
	if name, ok := id.ReservedName(); ok && id != identity.Unknown {
		return []string{"reserved:" + name}
	}
	return nil
}
