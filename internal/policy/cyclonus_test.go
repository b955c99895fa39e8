package policy_test

// Differential test: the engine against cyclonus v0.5.6 (generator test
// cases + matcher), the NetworkPolicy oracle of the Kubernetes community.
//
// Model (cyclonus's standard one): namespaces x, y, z labelled ns=<name>
// (plus kubernetes.io/metadata.name, which Kubernetes adds); pods a, b, c
// in each, labelled pod=<name>, each serving 80 and 81 on TCP, UDP and SCTP
// with ports named serve-<port>-<proto>; plus three addresses outside the
// cluster, inside/outside the ipBlocks the generator builds from x/a's IP.
// Every step of every generated test case is applied to one repository
// incrementally, and every (source, destination, port, protocol) cell is
// compared with the matcher; a repository built from scratch at each step
// must agree with the incremental one.
//
// Justified differences (counted, never ignored silently):
//  1. ipBlock vs pod IPs. Kubernetes leaves it to the implementation whether
//     an ipBlock selects pod IPs; cyclonus says yes, Cilium (and Bulwark)
//     say no: a pod address always carries its pod identity and CIDR
//     selectors only select addresses outside the cluster. The engine is
//     compared to the matcher run with pod addresses that no ipBlock covers;
//     cells where that changes the matcher's answer are counted.
// Egress named ports are not a difference: a named port resolves against
// the destination pod's ports only, and an address outside the cluster has
// none, in Kubernetes, cyclonus and Bulwark alike.
// Every other cell must match exactly.

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/mattfenwick/cyclonus/pkg/generator"
	"github.com/mattfenwick/cyclonus/pkg/matcher"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var (
	cyNamespaces = []string{"x", "y", "z"}
	cyPods       = []string{"a", "b", "c"}
	cyPorts      = []int{80, 81}
	cyProtos     = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}
	// Outside the cluster: inside x/a's /24 and /28 (the generator's
	// ipBlock and its except), inside the /24 only, and elsewhere.
	cyExternal = []string{"10.0.0.9", "10.0.0.100", "192.0.2.1"}
)

type cyPod struct {
	ns, name string
	labels   map[string]string
	ip       string
}

// cyModel mirrors the cluster for the oracle.
type cyModel struct {
	nsLabels map[string]map[string]string
	pods     []*cyPod
	policies map[string]*networkingv1.NetworkPolicy
	nextIP   map[string]int
}

func newCyModel() *cyModel {
	m := &cyModel{nsLabels: map[string]map[string]string{}, policies: map[string]*networkingv1.NetworkPolicy{}, nextIP: map[string]int{}}
	for i, ns := range cyNamespaces {
		m.nsLabels[ns] = map[string]string{"ns": ns}
		for _, p := range cyPods {
			m.addPod(ns, p, map[string]string{"pod": p}, i)
		}
	}
	return m
}

func (m *cyModel) nsIndex(ns string) int {
	for i, n := range cyNamespaces {
		if n == ns {
			return i
		}
	}
	return 3 + len(ns) // namespaces created by test cases
}

func (m *cyModel) addPod(ns, name string, labels map[string]string, nsIdx int) *cyPod {
	m.nextIP[ns]++
	p := &cyPod{ns: ns, name: name, labels: labels, ip: fmt.Sprintf("10.0.%d.%d", nsIdx, m.nextIP[ns])}
	m.pods = append(m.pods, p)
	return p
}

func cyPodObject(p *cyPod) *corev1.Pod {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: p.name, Labels: p.labels}}
	pod.Status.PodIP = p.ip
	for _, port := range cyPorts {
		for _, proto := range cyProtos {
			pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{
				Name: fmt.Sprintf("cont-%d-%s", port, strings.ToLower(string(proto))),
				Ports: []corev1.ContainerPort{{
					Name: fmt.Sprintf("serve-%d-%s", port, strings.ToLower(string(proto))), ContainerPort: int32(port), Protocol: proto,
				}},
			})
		}
	}
	return pod
}

func nsObject(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

// objects returns the whole model as engine inputs.
func (m *cyModel) objects() []any {
	var objs []any
	for ns, ls := range m.nsLabels {
		objs = append(objs, nsObject(ns, ls))
	}
	for _, p := range m.pods {
		objs = append(objs, cyPodObject(p))
	}
	for _, np := range m.policies {
		objs = append(objs, np)
	}
	return objs
}

// apply performs an action on the model and on the repository.
func (m *cyModel) apply(t *testing.T, repo *policy.Repository, a *generator.Action) {
	t.Helper()
	var err error
	switch {
	case a.CreatePolicy != nil || a.UpdatePolicy != nil:
		np := a.CreatePolicy
		pol := (*networkingv1.NetworkPolicy)(nil)
		if np != nil {
			pol = np.Policy
		} else {
			pol = a.UpdatePolicy.Policy
		}
		m.policies[pol.Namespace+"/"+pol.Name] = pol
		_, err = repo.Upsert(pol)
	case a.DeletePolicy != nil:
		delete(m.policies, a.DeletePolicy.Namespace+"/"+a.DeletePolicy.Name)
		_, err = repo.Delete(policy.ObjectRef{Kind: "NetworkPolicy", Namespace: a.DeletePolicy.Namespace, Name: a.DeletePolicy.Name})
	case a.CreateNamespace != nil:
		m.nsLabels[a.CreateNamespace.Namespace] = a.CreateNamespace.Labels
		_, err = repo.Upsert(nsObject(a.CreateNamespace.Namespace, a.CreateNamespace.Labels))
	case a.SetNamespaceLabels != nil:
		m.nsLabels[a.SetNamespaceLabels.Namespace] = a.SetNamespaceLabels.Labels
		_, err = repo.Upsert(nsObject(a.SetNamespaceLabels.Namespace, a.SetNamespaceLabels.Labels))
	case a.DeleteNamespace != nil:
		ns := a.DeleteNamespace.Namespace
		delete(m.nsLabels, ns)
		var pods []*cyPod
		for _, p := range m.pods {
			if p.ns != ns {
				pods = append(pods, p)
			}
		}
		m.pods = pods
		for k, np := range m.policies {
			if np.Namespace == ns {
				delete(m.policies, k)
			}
		}
		_, err = repo.Delete(policy.ObjectRef{Kind: "Namespace", Name: ns})
	case a.CreatePod != nil:
		c := a.CreatePod
		p := m.addPod(c.Namespace, c.Pod, c.Labels, m.nsIndex(c.Namespace))
		_, err = repo.Upsert(cyPodObject(p))
	case a.SetPodLabels != nil:
		for _, p := range m.pods {
			if p.ns == a.SetPodLabels.Namespace && p.name == a.SetPodLabels.Pod {
				p.labels = a.SetPodLabels.Labels
				_, err = repo.Upsert(cyPodObject(p))
			}
		}
	case a.DeletePod != nil:
		var pods []*cyPod
		for _, p := range m.pods {
			if p.ns == a.DeletePod.Namespace && p.name == a.DeletePod.Pod {
				continue
			}
			pods = append(pods, p)
		}
		m.pods = pods
		_, err = repo.Delete(policy.ObjectRef{Kind: "Pod", Namespace: a.DeletePod.Namespace, Name: a.DeletePod.Pod})
	case a.ReadNetworkPolicies != nil:
	default:
		t.Fatalf("unknown action %+v", a)
	}
	if err != nil {
		t.Fatalf("apply action: %v", err)
	}
}

type cyPeer struct {
	pod *cyPod // nil: external
	ip  string
}

func (p cyPeer) String() string {
	if p.pod != nil {
		return p.pod.ns + "/" + p.pod.name
	}
	return p.ip
}

// oracle asks the matcher. podIPs: give pods their real addresses (raw
// cyclonus) or addresses no IPv4 ipBlock covers (Cilium semantics).
func (m *cyModel) oracle(pol *matcher.Policy, src, dst cyPeer, port int, proto corev1.Protocol, realPodIPs bool) bool {
	peer := func(p cyPeer, i int) *matcher.TrafficPeer {
		if p.pod == nil {
			return &matcher.TrafficPeer{IP: p.ip}
		}
		ip := p.pod.ip
		if !realPodIPs {
			ip = fmt.Sprintf("fd00::%d", i+1)
		}
		nsl := map[string]string{}
		for k, v := range m.nsLabels[p.pod.ns] {
			nsl[k] = v
		}
		nsl["kubernetes.io/metadata.name"] = p.pod.ns
		return &matcher.TrafficPeer{IP: ip, Internal: &matcher.InternalPeer{PodLabels: p.pod.labels, NamespaceLabels: nsl, Namespace: p.pod.ns}}
	}
	name := ""
	if dst.pod != nil {
		name = fmt.Sprintf("serve-%d-%s", port, strings.ToLower(string(proto)))
	}
	tr := &matcher.Traffic{Source: peer(src, 0), Destination: peer(dst, 1), ResolvedPort: port, ResolvedPortName: name, Protocol: proto}
	return pol.IsTrafficAllowed(tr).IsAllowed()
}

var cyProtoNum = map[corev1.Protocol]resolved.Protocol{corev1.ProtocolTCP: resolved.ProtoTCP, corev1.ProtocolUDP: resolved.ProtoUDP, corev1.ProtocolSCTP: resolved.ProtoSCTP}

// engineVerdict evaluates a cell on a snapshot with the reference lookup.
func engineVerdict(t *testing.T, snap *policy.Snapshot, src, dst cyPeer, port int, proto corev1.Protocol) bool {
	idOf := func(p cyPeer) (identity.NumericIdentity, *policy.Endpoint) {
		if p.pod == nil {
			return snap.IPCache.Lookup(netip.MustParseAddr(p.ip)), nil
		}
		ep := snap.Endpoints[policy.EndpointKey{Namespace: p.pod.ns, Name: p.pod.name}]
		if ep == nil {
			t.Fatalf("endpoint %s missing", p)
		}
		if got := snap.IPCache.Lookup(netip.MustParseAddr(p.pod.ip)); got != ep.Identity {
			t.Fatalf("ipcache: %s resolves to %v, endpoint identity %v", p.pod.ip, got, ep.Identity)
		}
		return ep.Identity, ep
	}
	srcID, srcEP := idOf(src)
	dstID, dstEP := idOf(dst)
	pr := cyProtoNum[proto]
	if srcEP != nil && srcEP.Policy.Egress.Lookup(snap.Selectors, dstID, pr, uint16(port)).Verdict == resolved.Deny {
		return false
	}
	if dstEP != nil && dstEP.Policy.Ingress.Lookup(snap.Selectors, srcID, pr, uint16(port)).Verdict == resolved.Deny {
		return false
	}
	return true
}

func TestCyclonusDifferential(t *testing.T) {
	if testing.Short() {
		t.Skip("long differential test")
	}
	gen := generator.NewTestCaseGenerator(true, "10.0.0.1", cyNamespaces, nil, nil)
	cases := gen.GenerateAllTestCases()
	if len(cases) < 100 {
		t.Fatalf("cyclonus generated only %d test cases", len(cases))
	}
	var cells, ipBlockDiffs, steps int
	for ci, tc := range cases {
		model := newCyModel()
		repo := policy.NewRepository(policy.Options{})
		if _, err := repo.Upsert(model.objects()...); err != nil {
			t.Fatalf("case %d %q: load model: %v", ci, tc.Description, err)
		}
		for si, step := range tc.Steps {
			steps++
			for _, a := range step.Actions {
				model.apply(t, repo, a)
			}
			snap := repo.Snapshot()
			fresh := policy.NewRepository(policy.Options{})
			if _, err := fresh.Upsert(model.objects()...); err != nil {
				t.Fatalf("case %d step %d: rebuild: %v", ci, si, err)
			}
			freshSnap := fresh.Snapshot()

			var nps []*networkingv1.NetworkPolicy
			keys := make([]string, 0, len(model.policies))
			for k := range model.policies {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				nps = append(nps, model.policies[k])
			}
			oracle := matcher.BuildNetworkPolicies(false, nps)

			var peers []cyPeer
			for _, p := range model.pods {
				peers = append(peers, cyPeer{pod: p})
			}
			for _, ip := range cyExternal {
				peers = append(peers, cyPeer{ip: ip})
			}
			failures := 0
			for _, src := range peers {
				for _, dst := range peers {
					if src.pod == nil && dst.pod == nil {
						continue
					}
					for _, port := range cyPorts {
						for _, proto := range cyProtos {
							cells++
							got := engineVerdict(t, snap, src, dst, port, proto)
							if fresh := engineVerdict(t, freshSnap, src, dst, port, proto); fresh != got {
								t.Errorf("case %d %q step %d: %s -> %s %d/%s: incremental %v, rebuilt %v", ci, tc.Description, si, src, dst, port, proto, got, fresh)
							}
							want := model.oracle(oracle, src, dst, port, proto, false)
							if got != want {
								failures++
								if failures <= 5 {
									t.Errorf("case %d %q step %d: %s -> %s %d/%s: engine allowed=%v, cyclonus (Cilium semantics) allowed=%v\n%s",
										ci, tc.Description, si, src, dst, port, proto, got, want, oracle.ExplainTable())
								}
								continue
							}
							if model.oracle(oracle, src, dst, port, proto, true) != want {
								ipBlockDiffs++
							}
						}
					}
				}
			}
			if failures > 0 {
				t.Fatalf("case %d %q step %d: %d cells differ", ci, tc.Description, si, failures)
			}
		}
	}
	t.Logf("cyclonus: %d test cases, %d steps, %d cells compared; justified differences: %d ipBlock-vs-pod-IP cells",
		len(cases), steps, cells, ipBlockDiffs)
	if cells == 0 {
		t.Fatal("no cells compared")
	}
}
