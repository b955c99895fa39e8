// Package policytest builds synthetic cluster states (namespaces, pods,
// NetworkPolicies, CiliumNetworkPolicies and clusterwide policies) of a
// given size for benchmarks and scale tests of the policy engine.
package policytest

import (
	"fmt"

	"github.com/bulwark-net/bulwark/internal/policy/api"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Size of a synthetic state.
type Size struct {
	Namespaces int // each labelled team=t<i%5>
	LabelSets  int // distinct (namespace, app) pairs; a multiple of Namespaces
	Pods       int // spread evenly over the label sets
	Policies   int // 60% CNP, 30% NetworkPolicy, 10% CCNP
}

// Standard is the scale the engine is benchmarked at: 10k pods, 1k label
// sets, 1k policies.
var Standard = Size{Namespaces: 20, LabelSets: 1000, Pods: 10000, Policies: 1000}

// State is a synthetic state.
type State struct {
	Namespaces []*corev1.Namespace
	Pods       []*corev1.Pod
	Policies   []any // *networkingv1.NetworkPolicy, *api.CiliumNetworkPolicy, *api.CiliumClusterwideNetworkPolicy
}

// Objects returns every object, namespaces first.
func (s *State) Objects() []any {
	out := make([]any, 0, len(s.Namespaces)+len(s.Pods)+len(s.Policies))
	for _, n := range s.Namespaces {
		out = append(out, n)
	}
	for _, p := range s.Pods {
		out = append(out, p)
	}
	return append(out, s.Policies...)
}

func nsName(i int) string { return fmt.Sprintf("ns-%d", i) }

// Build makes a deterministic state of the given size.
func Build(sz Size) *State {
	st := &State{}
	for i := 0; i < sz.Namespaces; i++ {
		st.Namespaces = append(st.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: nsName(i), Labels: map[string]string{"team": fmt.Sprintf("t%d", i%5)},
		}})
	}
	apps := sz.LabelSets / sz.Namespaces
	for p := 0; p < sz.Pods; p++ {
		set := p % sz.LabelSets
		ns, app := set%sz.Namespaces, set/sz.Namespaces
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
			Namespace: nsName(ns), Name: fmt.Sprintf("app-%d-%d", app, p/sz.LabelSets),
			Labels: map[string]string{"app": fmt.Sprintf("app-%d", app), "tier": fmt.Sprintf("tier-%d", app%4)},
		}}
		pod.Spec.Containers = []corev1.Container{{Name: "main", Ports: []corev1.ContainerPort{
			{Name: "http", ContainerPort: int32(8000 + app%10)},
			{Name: "metrics", ContainerPort: 9090},
		}}}
		pod.Status.PodIP = fmt.Sprintf("10.%d.%d.%d", 64+p/65536, (p/256)%256, p%256)
		st.Pods = append(st.Pods, pod)
	}
	for i := 0; i < sz.Policies; i++ {
		ns, app := i%sz.Namespaces, (i/sz.Namespaces)%apps
		switch {
		case i%10 < 6:
			st.Policies = append(st.Policies, cnp(i, nsName(ns), app, apps))
		case i%10 < 9:
			st.Policies = append(st.Policies, netpol(i, nsName(ns), app, apps))
		default:
			st.Policies = append(st.Policies, ccnp(i, app))
		}
	}
	return st
}

func appSel(app int) api.EndpointSelector {
	return api.EndpointSelector{LabelSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", app)}}}
}

// CNP builds policy number i (exported so benchmarks can vary one policy).
func CNP(i int, ns string, app, apps, port int) *api.CiliumNetworkPolicy {
	p := cnp(i, ns, app, apps)
	p.Spec.Ingress[0].ToPorts[0].Ports[0].Port = api.Port(fmt.Sprint(port))
	return p
}

func cnp(i int, ns string, app, apps int) *api.CiliumNetworkPolicy {
	return &api.CiliumNetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: api.GroupVersion, Kind: api.KindCNP},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("cnp-%d", i)},
		Spec: &api.Rule{
			EndpointSelector: ptr(appSel(app)),
			Ingress: []api.IngressRule{{
				IngressCommonRule: api.IngressCommonRule{FromEndpoints: []api.EndpointSelector{appSel((app + 1) % apps)}},
				ToPorts:           []api.PortRule{{Ports: []api.PortProtocol{{Port: "8080", Protocol: api.ProtoTCP}}}},
			}, {
				IngressCommonRule: api.IngressCommonRule{FromEndpoints: []api.EndpointSelector{{LabelSelector: metav1.LabelSelector{
					MatchLabels:      map[string]string{"k8s:io.cilium.k8s.namespace.labels.team": fmt.Sprintf("t%d", i%5)},
					MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "k8s:io.kubernetes.pod.namespace", Operator: metav1.LabelSelectorOpExists}},
				}}}},
				ToPorts: []api.PortRule{{Ports: []api.PortProtocol{{Port: "metrics"}}}},
			}},
			Egress: []api.EgressRule{{
				EgressCommonRule: api.EgressCommonRule{ToEndpoints: []api.EndpointSelector{appSel((app + 2) % apps)}},
				ToPorts:          []api.PortRule{{Ports: []api.PortProtocol{{Port: "5432", Protocol: api.ProtoTCP}}}},
			}, {
				EgressCommonRule: api.EgressCommonRule{ToCIDRSet: []api.CIDRRule{{Cidr: api.CIDR(fmt.Sprintf("172.%d.0.0/16", 16+i%16)), ExceptCIDRs: []api.CIDR{api.CIDR(fmt.Sprintf("172.%d.1.0/24", 16+i%16))}}}},
			}, {
				EgressCommonRule: api.EgressCommonRule{ToEntities: []api.Entity{api.EntityKubeAPIServer}},
			}},
		},
	}
}

func netpol(i int, ns string, app, apps int) *networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	http := intstr.FromString("http")
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("np-%d", i)},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"tier": fmt.Sprintf("tier-%d", app%4)}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{
					NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", i%5)}},
					PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", (app+3)%apps)}},
				}, {
					IPBlock: &networkingv1.IPBlock{CIDR: fmt.Sprintf("192.168.%d.0/24", i%256)},
				}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &http}},
			}},
		},
	}
}

func ccnp(i, app int) *api.CiliumClusterwideNetworkPolicy {
	return &api.CiliumClusterwideNetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: api.GroupVersion, Kind: api.KindCCNP},
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ccnp-%d", i)},
		Spec: &api.Rule{
			EndpointSelector: ptr(appSel(app)),
			IngressDeny: []api.IngressDenyRule{{
				IngressCommonRule: api.IngressCommonRule{FromCIDR: []api.CIDR{api.CIDR(fmt.Sprintf("203.0.%d.0/24", i%256))}},
			}},
			Ingress: []api.IngressRule{{
				IngressCommonRule: api.IngressCommonRule{FromEntities: []api.Entity{api.EntityCluster}},
				ToPorts:           []api.PortRule{{Ports: []api.PortProtocol{{Port: "9090", Protocol: api.ProtoTCP}}}},
			}},
		},
	}
}

func ptr[T any](v T) *T { return &v }
