package policy_test

import (
	"testing"

	"github.com/bulwark-net/bulwark/internal/offline/check"
	"github.com/bulwark-net/bulwark/internal/policy"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func webPod(name, ip string, port int32) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: name, Labels: map[string]string{"app": "web"}}}
	p.Spec.Containers = []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: port, Protocol: corev1.ProtocolTCP}}}}
	p.Status.PodIP = ip
	return p
}

// Egress named ports follow the destination pods' ports incrementally: a
// new value, a replica of the same identity that disagrees (none of the
// identity's values match, as Cilium), and its removal.
func TestEgressNamedPortFollowsPods(t *testing.T) {
	repo := policy.NewRepository(policy.Options{})
	client := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "client", Labels: map[string]string{"app": "client"}}}
	client.Status.PodIP = "10.0.0.1"
	http := intstr.FromString("http")
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "named"}, Spec: networkingv1.NetworkPolicySpec{
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}},
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
		Egress:      []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: &http}}}},
	}}
	upsert := func(objs ...any) {
		t.Helper()
		if _, err := repo.Upsert(objs...); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(step, dst string, port int, want string) {
		t.Helper()
		st := &check.State{Repo: repo, Snap: repo.Snapshot()}
		res, err := st.Check(check.Flow{Src: "x/client", Dst: dst, Port: port, Protocol: "TCP"})
		if err != nil {
			t.Fatal(err)
		}
		if res.Verdict != want {
			t.Errorf("%s: client -> %s:%d %s, want %s", step, dst, port, res.Verdict, want)
		}
	}
	upsert(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, client, np, webPod("web-0", "10.0.0.2", 80))
	expect("one replica", "x/web-0", 80, "allowed")
	expect("one replica", "x/web-0", 81, "denied")
	expect("one replica", "192.0.2.1", 80, "denied")

	upsert(webPod("web-0", "10.0.0.2", 81))
	expect("port changed", "x/web-0", 81, "allowed")
	expect("port changed", "x/web-0", 80, "denied")

	upsert(webPod("web-1", "10.0.0.3", 80))
	expect("replicas disagree", "x/web-0", 81, "denied")
	expect("replicas disagree", "x/web-1", 80, "denied")

	if _, err := repo.Delete(policy.ObjectRef{Kind: "Pod", Namespace: "x", Name: "web-0"}); err != nil {
		t.Fatal(err)
	}
	expect("disagreeing replica gone", "x/web-1", 80, "allowed")
	expect("disagreeing replica gone", "x/web-1", 81, "denied")
}
