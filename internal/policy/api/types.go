// Package api holds the cilium.io/v2 policy documents (CiliumNetworkPolicy and
// CiliumClusterwideNetworkPolicy) exactly as users write them in YAML, with
// the helpers the resolver needs to read them: normalised selectors, the
// namespace confinement of namespaced policies, port and protocol parsing.
//
// These are our own structs (not Cilium's pkg/policy/api); their JSON field
// names follow the cilium.io/v2 CRDs so every document that Cilium accepts
// decodes here. The types carry no validation state: see
// internal/offline/validate for what is rejected and why.
package api

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Group, version and kinds of the documents this package models.
const (
	GroupVersion  = "cilium.io/v2"
	KindCNP       = "CiliumNetworkPolicy"
	KindCCNP      = "CiliumClusterwideNetworkPolicy"
	KindCIDRGroup = "CiliumCIDRGroup"
)

// CiliumNetworkPolicy is a namespaced cilium.io/v2 policy. Spec and Specs may
// both be set; their rules are all in force.
type CiliumNetworkPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              *Rule         `json:"spec,omitempty"`
	Specs             []Rule        `json:"specs,omitempty"`
	Status            *PolicyStatus `json:"status,omitempty"`
}

// CiliumClusterwideNetworkPolicy is the cluster-scoped variant: its selectors
// are not confined to a namespace.
type CiliumClusterwideNetworkPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              *Rule         `json:"spec,omitempty"`
	Specs             []Rule        `json:"specs,omitempty"`
	Status            *PolicyStatus `json:"status,omitempty"`
}

// PolicyStatus is the status the agents write back; kept so that documents
// exported from a cluster (kubectl get -o yaml) decode. Bulwark ignores it.
type PolicyStatus struct {
	Conditions         []metav1.Condition `json:"conditions,omitempty"`
	DerivativePolicies map[string]any     `json:"derivativePolicies,omitempty"`
	Nodes              map[string]any     `json:"nodes,omitempty"`
}

// Rule is one policy rule: the endpoints it applies to (EndpointSelector, or
// NodeSelector for host policies; exactly one is set) and its sections.
// A rule with at least one rule in a direction's sections puts the selected
// endpoints into default deny for that direction, unless EnableDefaultDeny
// says otherwise (see DefaultDenyIngress).
type Rule struct {
	EndpointSelector  *EndpointSelector `json:"endpointSelector,omitempty"`
	NodeSelector      *EndpointSelector `json:"nodeSelector,omitempty"`
	Ingress           []IngressRule     `json:"ingress,omitempty"`
	IngressDeny       []IngressDenyRule `json:"ingressDeny,omitempty"`
	Egress            []EgressRule      `json:"egress,omitempty"`
	EgressDeny        []EgressDenyRule  `json:"egressDeny,omitempty"`
	Labels            []Label           `json:"labels,omitempty"`
	EnableDefaultDeny DefaultDenyConfig `json:"enableDefaultDeny,omitempty"`
	Description       string            `json:"description,omitempty"`
	Log               *LogConfig        `json:"log,omitempty"`
}

// DefaultDenyConfig overrides whether a rule puts its endpoints into default
// deny for a direction; nil means "yes if the rule has a section for it".
type DefaultDenyConfig struct {
	Ingress *bool `json:"ingress,omitempty"`
	Egress  *bool `json:"egress,omitempty"`
}

// LogConfig is Cilium's per-rule policy-verdict log setting.
type LogConfig struct {
	Value string `json:"value,omitempty"`
}

// Label is one label of a rule (metadata for auditing, not a selector).
type Label struct {
	Key    string `json:"key"`
	Value  string `json:"value,omitempty"`
	Source string `json:"source,omitempty"`
}

// EndpointSelector selects endpoints by label with metav1.LabelSelector
// semantics. Keys may carry a Cilium source prefix ("k8s:", "any:",
// "reserved:"); use Normalized or Selector to read it.
type EndpointSelector struct {
	metav1.LabelSelector `json:",inline"`
}

// CIDR is an IPv4 or IPv6 prefix ("10.0.0.0/8") or a bare address.
type CIDR string

// CIDRRule is a prefix with exceptions, or a reference to a CiliumCIDRGroup.
type CIDRRule struct {
	Cidr              CIDR              `json:"cidr,omitempty"`
	CIDRGroupRef      string            `json:"cidrGroupRef,omitempty"`
	CIDRGroupSelector *EndpointSelector `json:"cidrGroupSelector,omitempty"`
	ExceptCIDRs       []CIDR            `json:"except,omitempty"`
}

// IngressCommonRule holds the peer selectors of an ingress section. Within
// one rule the set fields are ORed (any of them selects the peer), except
// FromRequires, which every selected peer must also match.
type IngressCommonRule struct {
	FromEndpoints []EndpointSelector `json:"fromEndpoints,omitempty"`
	FromRequires  []EndpointSelector `json:"fromRequires,omitempty"`
	FromCIDR      []CIDR             `json:"fromCIDR,omitempty"`
	FromCIDRSet   []CIDRRule         `json:"fromCIDRSet,omitempty"`
	FromEntities  []Entity           `json:"fromEntities,omitempty"`
	FromGroups    []Groups           `json:"fromGroups,omitempty"`
	FromNodes     []EndpointSelector `json:"fromNodes,omitempty"`
}

// IngressRule allows traffic from the peers on ToPorts (all ports if empty)
// and ICMPs.
type IngressRule struct {
	IngressCommonRule `json:",inline"`
	ToPorts           []PortRule      `json:"toPorts,omitempty"`
	ICMPs             []ICMPRule      `json:"icmps,omitempty"`
	Authentication    *Authentication `json:"authentication,omitempty"`
}

// IngressDenyRule denies traffic from the peers. Deny wins over every allow.
// Its PortRules may not carry L7 rules (validation rejects them).
type IngressDenyRule struct {
	IngressCommonRule `json:",inline"`
	ToPorts           []PortRule `json:"toPorts,omitempty"`
	ICMPs             []ICMPRule `json:"icmps,omitempty"`
}

// EgressCommonRule holds the peer selectors of an egress section (see
// IngressCommonRule for how they combine).
type EgressCommonRule struct {
	ToEndpoints []EndpointSelector `json:"toEndpoints,omitempty"`
	ToRequires  []EndpointSelector `json:"toRequires,omitempty"`
	ToCIDR      []CIDR             `json:"toCIDR,omitempty"`
	ToCIDRSet   []CIDRRule         `json:"toCIDRSet,omitempty"`
	ToEntities  []Entity           `json:"toEntities,omitempty"`
	ToServices  []Service          `json:"toServices,omitempty"`
	ToGroups    []Groups           `json:"toGroups,omitempty"`
	ToNodes     []EndpointSelector `json:"toNodes,omitempty"`
}

// EgressRule allows traffic to the peers (or to the FQDNs) on ToPorts.
type EgressRule struct {
	EgressCommonRule `json:",inline"`
	ToPorts          []PortRule      `json:"toPorts,omitempty"`
	ToFQDNs          []FQDNSelector  `json:"toFQDNs,omitempty"`
	ICMPs            []ICMPRule      `json:"icmps,omitempty"`
	Authentication   *Authentication `json:"authentication,omitempty"`
}

// EgressDenyRule denies traffic to the peers. No toFQDNs, no L7 rules.
type EgressDenyRule struct {
	EgressCommonRule `json:",inline"`
	ToPorts          []PortRule `json:"toPorts,omitempty"`
	ICMPs            []ICMPRule `json:"icmps,omitempty"`
}

// Authentication asks for mutual authentication before traffic is allowed.
type Authentication struct {
	Mode string `json:"mode"`
}

// Groups selects peers through a cloud provider's groups.
type Groups struct {
	AWS *AWSGroup `json:"aws,omitempty"`
}

// AWSGroup selects AWS instances by tag or security group.
type AWSGroup struct {
	Labels              map[string]string `json:"labels,omitempty"`
	SecurityGroupsIDs   []string          `json:"securityGroupsIds,omitempty"`
	SecurityGroupsNames []string          `json:"securityGroupsNames,omitempty"`
	Region              string            `json:"region,omitempty"`
}

// Service selects the backends of Kubernetes Services as peers.
type Service struct {
	K8sServiceSelector *K8sServiceSelectorNamespace `json:"k8sServiceSelector,omitempty"`
	K8sService         *K8sServiceNamespace         `json:"k8sService,omitempty"`
}

// K8sServiceNamespace names one Service.
type K8sServiceNamespace struct {
	ServiceName string `json:"serviceName,omitempty"`
	Namespace   string `json:"namespace,omitempty"`
}

// K8sServiceSelectorNamespace selects Services by their labels.
type K8sServiceSelectorNamespace struct {
	Selector  EndpointSelector `json:"selector"`
	Namespace string           `json:"namespace,omitempty"`
}

// FQDNSelector selects peers by the DNS names they were resolved from.
// Exactly one field is set. MatchPattern allows "*" wildcards.
type FQDNSelector struct {
	MatchName    string `json:"matchName,omitempty"`
	MatchPattern string `json:"matchPattern,omitempty"`
}

// PortRule is a list of ports (all ports if empty) with optional L7 rules.
type PortRule struct {
	Ports          []PortProtocol `json:"ports,omitempty"`
	TerminatingTLS *TLSContext    `json:"terminatingTLS,omitempty"`
	OriginatingTLS *TLSContext    `json:"originatingTLS,omitempty"`
	ServerNames    []string       `json:"serverNames,omitempty"`
	Listener       *Listener      `json:"listener,omitempty"`
	Rules          *L7Rules       `json:"rules,omitempty"`
}

// TLSContext names the secret holding TLS material for the proxy.
type TLSContext struct {
	Secret      *Secret `json:"secret,omitempty"`
	TrustedCA   string  `json:"trustedCA,omitempty"`
	Certificate string  `json:"certificate,omitempty"`
	PrivateKey  string  `json:"privateKey,omitempty"`
}

// Secret references a Kubernetes Secret.
type Secret struct {
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
}

// Listener redirects the port to a listener of a CiliumEnvoyConfig.
type Listener struct {
	EnvoyConfig *EnvoyConfig `json:"envoyConfig"`
	Name        string       `json:"name"`
	Priority    uint8        `json:"priority,omitempty"`
}

// EnvoyConfig references a CiliumEnvoyConfig or CiliumClusterwideEnvoyConfig.
type EnvoyConfig struct {
	Kind string `json:"kind,omitempty"`
	Name string `json:"name"`
}

// PortProtocol is one port (number or IANA service name) or port range
// (Port..EndPort) on a protocol. An empty Protocol means ANY.
type PortProtocol struct {
	Port     Port    `json:"port,omitempty"`
	EndPort  int32   `json:"endPort,omitempty"`
	Protocol L4Proto `json:"protocol,omitempty"`
}

// L7Rules are the application-level rules of a port. At most one kind is
// set (HTTP, Kafka, DNS, or L7Proto with L7).
type L7Rules struct {
	HTTP    []PortRuleHTTP  `json:"http,omitempty"`
	Kafka   []PortRuleKafka `json:"kafka,omitempty"`
	DNS     []PortRuleDNS   `json:"dns,omitempty"`
	L7Proto string          `json:"l7proto,omitempty"`
	L7      []PortRuleL7    `json:"l7,omitempty"`
}

// PortRuleHTTP allows requests matching all of its set fields. Method, Path
// and Host are extended regular expressions matched against the whole value;
// Headers are "Name" (present) or "Name: value" (exact).
type PortRuleHTTP struct {
	Path          string        `json:"path,omitempty"`
	Method        string        `json:"method,omitempty"`
	Host          string        `json:"host,omitempty"`
	Headers       []string      `json:"headers,omitempty"`
	HeaderMatches []HeaderMatch `json:"headerMatches,omitempty"`
}

// HeaderMatch requires a header value (or a secret's value); Mismatch says
// what to do when it differs: "" (deny), LOG, ADD, DELETE, REPLACE.
type HeaderMatch struct {
	Mismatch string  `json:"mismatch,omitempty"`
	Name     string  `json:"name"`
	Secret   *Secret `json:"secret,omitempty"`
	Value    string  `json:"value,omitempty"`
}

// PortRuleKafka is a Kafka L7 rule (decoded so that documents load; Bulwark
// does not enforce Kafka).
type PortRuleKafka struct {
	Role       string `json:"role,omitempty"`
	APIKey     string `json:"apiKey,omitempty"`
	APIVersion string `json:"apiVersion,omitempty"`
	ClientID   string `json:"clientID,omitempty"`
	Topic      string `json:"topic,omitempty"`
}

// PortRuleDNS allows DNS queries for a name or pattern ("*" wildcards).
type PortRuleDNS FQDNSelector

// PortRuleL7 is a generic key/value L7 rule for L7Proto parsers.
type PortRuleL7 map[string]string

// ICMPRule allows ICMP by type.
type ICMPRule struct {
	Fields []ICMPField `json:"fields,omitempty"`
}

// ICMPField is one ICMP type (number or name such as "EchoRequest") of a
// family (IPv4, the default, or IPv6).
type ICMPField struct {
	Family string              `json:"family,omitempty"`
	Type   *intstr.IntOrString `json:"type"`
}

// Entity names a class of peers that have no labels of their own.
type Entity string

// The entities Cilium defines.
const (
	EntityAll           Entity = "all"
	EntityWorld         Entity = "world"
	EntityWorldIPv4     Entity = "world-ipv4"
	EntityWorldIPv6     Entity = "world-ipv6"
	EntityCluster       Entity = "cluster"
	EntityHost          Entity = "host"
	EntityRemoteNode    Entity = "remote-node"
	EntityKubeAPIServer Entity = "kube-apiserver"
	EntityHealth        Entity = "health"
	EntityInit          Entity = "init"
	EntityIngress       Entity = "ingress"
	EntityUnmanaged     Entity = "unmanaged"
	EntityNone          Entity = "none"
)

// Entities lists every valid entity, in a stable order.
var Entities = []Entity{
	EntityAll, EntityWorld, EntityWorldIPv4, EntityWorldIPv6, EntityCluster,
	EntityHost, EntityRemoteNode, EntityKubeAPIServer, EntityHealth,
	EntityInit, EntityIngress, EntityUnmanaged, EntityNone,
}

// Valid reports whether e is one of Entities.
func (e Entity) Valid() bool {
	for _, v := range Entities {
		if e == v {
			return true
		}
	}
	return false
}
