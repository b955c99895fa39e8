package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/netip"
	"os"

	"github.com/cilium/cilium/pkg/endpoint/regeneration"
	"github.com/cilium/cilium/pkg/identity"
	"github.com/cilium/cilium/pkg/identity/identitymanager"
	"github.com/cilium/cilium/pkg/k8s"
	k8sConst "github.com/cilium/cilium/pkg/k8s/apis/cilium.io"
	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	slimnetv1 "github.com/cilium/cilium/pkg/k8s/slim/k8s/api/networking/v1"
	"github.com/cilium/cilium/pkg/labels"
	"github.com/cilium/cilium/pkg/policy"
	"github.com/cilium/cilium/pkg/policy/api"
	"github.com/cilium/cilium/pkg/policy/types"
	"github.com/cilium/cilium/pkg/policy/utils"
	testidentity "github.com/cilium/cilium/pkg/testutils/identity"
	testpolicy "github.com/cilium/cilium/pkg/testutils/policy"
	pkgtypes "github.com/cilium/cilium/pkg/types"
	"github.com/cilium/cilium/pkg/u8proto"
	"sigs.k8s.io/yaml"
)

// The exchange format (mirrored by internal/policy/difftest).
type scenario struct {
	Namespaces []namespace `json:"namespaces"`
	Pods       []pod       `json:"pods"`
	Externals  []string    `json:"externals"`
	Policies   []string    `json:"policies"` // YAML documents
	Cells      []cell      `json:"cells"`
}

type namespace struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels"`
}

type pod struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Labels    map[string]string `json:"labels"`
	Ports     []namedPort       `json:"ports"`
}

type namedPort struct {
	Name     string `json:"name"`
	Protocol string `json:"protocol"`
	Port     int    `json:"port"`
}

type cell struct {
	Src      string `json:"src"` // "ns/pod" or an address
	Dst      string `json:"dst"`
	Protocol string `json:"protocol"`
	Port     int    `json:"port"`
}

type result struct {
	Error   string    `json:"error,omitempty"`
	Verdict []verdict `json:"verdicts,omitempty"`
}

// verdict of one cell: egress at the source, ingress at the destination
// (true where the peer is not an endpoint: no policy applies there).
type verdict struct {
	Egress  bool `json:"egress"`
	Ingress bool `json:"ingress"`
}

func main() {
	api.InitEntities("default")
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	for in.Scan() {
		var sc scenario
		if err := json.Unmarshal(in.Bytes(), &sc); err != nil {
			fmt.Fprintf(os.Stderr, "ciliumref: decode scenario: %v\n", err)
			os.Exit(2)
		}
		res, err := evaluate(logger, &sc)
		if err != nil {
			res = result{Error: err.Error()}
		}
		if err := enc.Encode(res); err != nil {
			fmt.Fprintf(os.Stderr, "ciliumref: write: %v\n", err)
			os.Exit(2)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "ciliumref: read: %v\n", err)
		os.Exit(2)
	}
}

// endpoint is a pod as Cilium's policy sees it: an identity and the named
// ports of its containers.
type endpoint struct {
	id    *identity.Identity
	named pkgtypes.NamedPortMap
}

func (e *endpoint) GetID() uint64 { return uint64(e.id.ID) }
func (e *endpoint) GetIngressNamedPort(name string, proto u8proto.U8proto) uint16 {
	p, err := e.named.GetNamedPort(name, proto)
	if err != nil {
		return 0
	}
	return p
}
func (e *endpoint) PolicyDebug(string, ...any)                  {}
func (e *endpoint) IsHost() bool                                { return false }
func (e *endpoint) PreviousMapStateSizes() policy.MapStateSizes { return policy.MapStateSizes{} }
func (e *endpoint) RegenerateIfAlive(*regeneration.ExternalRegenerationMetadata) <-chan bool {
	ch := make(chan bool)
	close(ch)
	return ch
}

type namedPorts struct{ m pkgtypes.NamedPortMultiMap }

func (n namedPorts) GetNamedPorts() pkgtypes.NamedPortMultiMap { return n.m }

func podLabels(p pod, nsLabels map[string]string) labels.LabelArray {
	ls := labels.Labels{}
	add := func(k, v string) { ls[k] = labels.NewLabel(k, v, labels.LabelSourceK8s) }
	for k, v := range p.Labels {
		add(k, v)
	}
	add(k8sConst.PodNamespaceLabel, p.Namespace)
	for k, v := range nsLabels {
		add(k8sConst.PodNamespaceMetaLabelsPrefix+k, v)
	}
	add(k8sConst.PolicyLabelServiceAccount, "default")
	add(k8sConst.PolicyLabelCluster, "default")
	return ls.LabelArray()
}

func evaluate(logger *slog.Logger, sc *scenario) (result, error) {
	nsLabels := map[string]map[string]string{}
	for _, ns := range sc.Namespaces {
		nsLabels[ns.Name] = ns.Labels
	}
	// Identities: one per distinct pod label set (as Cilium allocates),
	// one CIDR identity per outside address (its /32, carrying the world
	// label of its family).
	byKey := map[string]*identity.Identity{}
	idmap := identity.IdentityMap{}
	next := identity.NumericIdentity(1000)
	nextLocal := identity.IdentityScopeLocal | 1
	eps := map[string]*endpoint{}
	peers := map[string]*identity.Identity{}
	npm := pkgtypes.NewNamedPortMultiMap()
	for _, p := range sc.Pods {
		la := podLabels(p, nsLabels[p.Namespace])
		key := la.String()
		id := byKey[key]
		if id == nil {
			id = identity.NewIdentityFromLabelArray(next, la)
			next++
			byKey[key] = id
			idmap[id.ID] = la
		}
		named := pkgtypes.NamedPortMap{}
		for _, np := range p.Ports {
			if np.Name == "" {
				continue
			}
			if err := named.AddPort(np.Name, np.Port, np.Protocol); err != nil {
				return result{}, fmt.Errorf("pod %s/%s: port %s: %w", p.Namespace, p.Name, np.Name, err)
			}
		}
		npm.Update(id.ID, nil, named)
		ref := p.Namespace + "/" + p.Name
		eps[ref] = &endpoint{id: id, named: named}
		peers[ref] = id
	}
	for _, a := range sc.Externals {
		addr, err := netip.ParseAddr(a)
		if err != nil {
			return result{}, fmt.Errorf("external %q: %w", a, err)
		}
		la := labels.GetCIDRLabels(netip.PrefixFrom(addr, addr.BitLen())).LabelArray()
		id := identity.NewIdentityFromLabelArray(nextLocal, la)
		nextLocal++
		idmap[id.ID] = la
		peers[a] = id
	}

	idManager := identitymanager.NewIDManager(logger)
	repo := policy.NewPolicyRepository(logger, idmap, nil, nil, idManager, testpolicy.NewPolicyMetricsNoop())
	repo.GetSelectorCache().SetLocalIdentityNotifier(testidentity.NewDummyIdentityNotifier())
	idManager.Subscribe(testpolicy.SelectorCacheObserver{Cache: repo.GetSubjectSelectorCache()})
	repo.SetNamedPortsGetter(namedPorts{npm})
	seen := map[identity.NumericIdentity]bool{}
	for _, id := range peers {
		if !seen[id.ID] {
			seen[id.ID] = true
			idManager.Add(id)
		}
	}

	for i, doc := range sc.Policies {
		entries, err := parsePolicy(logger, doc)
		if err != nil {
			return result{}, fmt.Errorf("policies[%d]: %w", i, err)
		}
		repo.MustAddPolicyEntries(entries)
	}

	// Distilled policies per endpoint (named ports make them per endpoint).
	distilled := map[*endpoint]*policy.EndpointPolicy{}
	policyOf := func(ep *endpoint) (*policy.EndpointPolicy, error) {
		if p, ok := distilled[ep]; ok {
			return p, nil
		}
		sp, _, err := repo.ComputeSelectorPolicy(ep.id)
		if err != nil {
			return nil, fmt.Errorf("resolve policy of identity %d: %w", ep.id.ID, err)
		}
		p := sp.DistillPolicy(logger, ep, map[string]uint16{policy.FallbackRedirectID: math.MaxUint16})
		p.Ready()
		distilled[ep] = p
		return p, nil
	}

	res := result{Verdict: make([]verdict, 0, len(sc.Cells))}
	for i, c := range sc.Cells {
		src, dst := peers[c.Src], peers[c.Dst]
		if src == nil || dst == nil {
			return result{}, fmt.Errorf("cells[%d]: unknown peer in %s -> %s", i, c.Src, c.Dst)
		}
		proto, err := u8proto.ParseProtocol(c.Protocol)
		if err != nil {
			return result{}, fmt.Errorf("cells[%d]: %w", i, err)
		}
		v := verdict{Egress: true, Ingress: true}
		if ep := eps[c.Src]; ep != nil {
			p, err := policyOf(ep)
			if err != nil {
				return result{}, err
			}
			e, _, _ := p.Lookup(policy.EgressKey().WithIdentity(dst.ID).WithPortProto(proto, uint16(c.Port)))
			v.Egress = !e.IsDeny()
		}
		if ep := eps[c.Dst]; ep != nil {
			p, err := policyOf(ep)
			if err != nil {
				return result{}, err
			}
			e, _, _ := p.Lookup(policy.IngressKey().WithIdentity(src.ID).WithPortProto(proto, uint16(c.Port)))
			v.Ingress = !e.IsDeny()
		}
		res.Verdict = append(res.Verdict, v)
	}
	return res, nil
}

// parsePolicy turns a document into policy entries the way the agent does:
// CNP/CCNP through their Parse (namespace confinement, sanitising), then
// RulesToPolicyEntries; NetworkPolicy through ParseNetworkPolicy.
func parsePolicy(logger *slog.Logger, doc string) (types.PolicyEntries, error) {
	var head struct {
		Kind string `json:"kind"`
	}
	if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
		return nil, err
	}
	switch head.Kind {
	case "CiliumNetworkPolicy":
		var cnp ciliumv2.CiliumNetworkPolicy
		if err := yaml.UnmarshalStrict([]byte(doc), &cnp); err != nil {
			return nil, err
		}
		rules, err := cnp.Parse(logger, "default")
		if err != nil {
			return nil, err
		}
		return utils.RulesToPolicyEntries(rules), nil
	case "CiliumClusterwideNetworkPolicy":
		var ccnp ciliumv2.CiliumClusterwideNetworkPolicy
		if err := yaml.UnmarshalStrict([]byte(doc), &ccnp); err != nil {
			return nil, err
		}
		rules, err := ccnp.Parse(logger, "default")
		if err != nil {
			return nil, err
		}
		return utils.RulesToPolicyEntries(rules), nil
	case "NetworkPolicy":
		var np slimnetv1.NetworkPolicy
		if err := yaml.UnmarshalStrict([]byte(doc), &np); err != nil {
			return nil, err
		}
		return k8s.ParseNetworkPolicy(logger, "default", &np)
	}
	return nil, fmt.Errorf("unsupported kind %q", head.Kind)
}
