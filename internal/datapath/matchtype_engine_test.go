package datapath

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// TestMatchTypesOfEnginePolicies compiles what the policy engine resolves
// from NetworkPolicies (its "all" selector for rules without peers, pod and
// namespace selectors otherwise) and checks the match type of each rule id,
// with wildcards inferred from membership as in the agent.
func TestMatchTypesOfEnginePolicies(t *testing.T) {
	pod := func(name, ip string, labels map[string]string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: name, Labels: labels}}
		p.Status.PodIP = ip
		return p
	}
	tcp := corev1.ProtocolTCP
	port := func(n int) []networkingv1.NetworkPolicyPort {
		p := intstr.FromInt32(int32(n))
		return []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}}
	}
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "db"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{
				{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}}, Ports: port(5432)},
				{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "admin"}}}}},
				{Ports: port(80)},
			},
			Egress: []networkingv1.NetworkPolicyEgressRule{{}},
		},
	}
	repo := policy.NewRepository(policy.Options{})
	if _, err := repo.Upsert(
		pod("db", "10.9.0.1", map[string]string{"app": "db"}),
		pod("web", "10.9.0.2", map[string]string{"app": "web"}),
		pod("admin", "10.9.0.3", map[string]string{"app": "admin"}),
		np,
	); err != nil {
		t.Fatal(err)
	}
	snap := repo.Snapshot()
	id := func(name string) identity.NumericIdentity {
		ep := snap.Endpoints[policy.EndpointKey{Namespace: "prod", Name: name}]
		if ep == nil {
			t.Fatalf("no endpoint prod/%s", name)
		}
		return ep.Identity
	}
	db := snap.Endpoints[policy.EndpointKey{Namespace: "prod", Name: "db"}]
	c, err := Compile(State{Endpoints: map[uint32]*resolved.EndpointPolicy{1: db.Policy}, Selectors: snap.Selectors})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		dir  resolved.Direction
		peer identity.NumericIdentity
		port uint16
		want event.MatchType
	}{
		{resolved.Ingress, id("web"), 5432, event.MatchL3L4},
		{resolved.Ingress, id("admin"), 22, event.MatchL3Only},
		{resolved.Ingress, identity.WorldIPv4, 80, event.MatchL4Only},
		{resolved.Ingress, identity.WorldIPv4, 81, event.MatchNone}, // default deny
		{resolved.Egress, identity.WorldIPv4, 443, event.MatchAll},
		{resolved.Egress, id("web"), 8080, event.MatchAll},
	}
	for _, tc := range cases {
		d := c.ReferenceLookup(1, tc.dir, tc.peer, resolved.ProtoTCP, tc.port)
		if got := c.Rules[d.RuleID].MatchType; got != tc.want {
			t.Errorf("%s peer %d tcp/%d: verdict %s rule %d match type %s, want %s", tc.dir, tc.peer, tc.port, d.Verdict, d.RuleID, got, tc.want)
		}
	}
}
