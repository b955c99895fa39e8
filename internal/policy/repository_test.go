package policy_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func pod(ns, name, ip string, labels map[string]string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels}}
	p.Status.PodIP = ip
	return p
}

func allowFromNamespace(ns, name string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}}}},
		},
	}
}

// Entries are a sum: "allow from every pod" is one entry whatever the
// number of peer identities; membership lives in the selector.
func TestEntriesAreASum(t *testing.T) {
	repo := policy.NewRepository(policy.Options{})
	objs := []any{pod("prod", "db", "10.0.0.1", map[string]string{"app": "db"}), allowFromNamespace("prod", "db-ingress")}
	for i := 0; i < 200; i++ {
		objs = append(objs, pod("prod", fmt.Sprintf("client-%d", i), fmt.Sprintf("10.0.1.%d", i), map[string]string{"app": fmt.Sprintf("client-%d", i)}))
	}
	if _, err := repo.Upsert(objs...); err != nil {
		t.Fatal(err)
	}
	snap := repo.Snapshot()
	db := snap.Endpoints[policy.EndpointKey{Namespace: "prod", Name: "db"}]
	if n := len(db.Policy.Ingress.Entries); n != 1 {
		t.Fatalf("%d ingress entries, want 1", n)
	}
	e := db.Policy.Ingress.Entries[0]
	if got := len(snap.Selectors.Identities(e.Peer)); got != 201 {
		t.Errorf("selector has %d identities, want 201 pods", got)
	}
	if !db.Policy.Ingress.Enforced || db.Policy.Egress.Enforced {
		t.Errorf("enforcement: ingress %v egress %v", db.Policy.Ingress.Enforced, db.Policy.Egress.Enforced)
	}
}

// A new pod changes selector membership, not the tables of other
// endpoints; a policy change recomputes only the endpoints it selects; a
// failed update changes nothing.
func TestIncrementalChanges(t *testing.T) {
	repo := policy.NewRepository(policy.Options{})
	if _, err := repo.Upsert(
		pod("prod", "db", "10.0.0.1", map[string]string{"app": "db"}),
		pod("prod", "web", "10.0.0.2", map[string]string{"app": "web"}),
		allowFromNamespace("prod", "db-ingress"),
	); err != nil {
		t.Fatal(err)
	}
	repo.Changes()
	rev := repo.Revision()
	dbBefore := repo.Snapshot().Endpoints[policy.EndpointKey{Namespace: "prod", Name: "db"}].Policy

	ch, err := repo.Upsert(pod("prod", "worker", "10.0.0.3", map[string]string{"app": "worker"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(ch.Endpoints) != 1 || ch.Endpoints[0].Name != "worker" || !ch.IPCache || len(ch.Selectors) == 0 || ch.Revision != rev+1 {
		t.Errorf("new pod: change %+v", ch)
	}
	snap := repo.Snapshot()
	db := snap.Endpoints[policy.EndpointKey{Namespace: "prod", Name: "db"}]
	if db.Policy != dbBefore {
		t.Error("db's table was rebuilt for a peer change")
	}
	worker := snap.Endpoints[policy.EndpointKey{Namespace: "prod", Name: "worker"}]
	if d := db.Policy.Ingress.Lookup(snap.Selectors, worker.Identity, resolved.ProtoTCP, 5432); d.Verdict != resolved.Allow {
		t.Errorf("new pod not allowed by the namespace selector: %+v", d)
	}
	if got := snap.IPCache.Lookup(netip.MustParseAddr("10.0.0.3")); got != worker.Identity {
		t.Errorf("ipcache: %v, want %v", got, worker.Identity)
	}

	// Policy change: only db is recomputed.
	np := allowFromNamespace("prod", "db-ingress")
	np.Spec.Ingress[0].From = nil
	np.Spec.Ingress[0].Ports = []networkingv1.NetworkPolicyPort{{}}
	ch, err = repo.Upsert(np)
	if err != nil {
		t.Fatal(err)
	}
	if len(ch.Endpoints) != 1 || ch.Endpoints[0].Name != "db" {
		t.Errorf("policy change recomputed %v", ch.Endpoints)
	}
	acc := repo.Changes()
	if len(acc.Endpoints) != 2 {
		t.Errorf("accumulated changes %+v", acc)
	}

	// Invalid batch: nothing applied.
	bad := allowFromNamespace("prod", "bad")
	bad.Spec.Ingress[0].From = []networkingv1.NetworkPolicyPeer{{}}
	before := repo.Revision()
	if _, err := repo.Upsert(pod("prod", "extra", "10.0.0.9", nil), bad); err == nil {
		t.Fatal("invalid peer accepted")
	}
	if _, ok := repo.Snapshot().Endpoints[policy.EndpointKey{Namespace: "prod", Name: "extra"}]; ok || repo.Revision() != before {
		t.Error("a failed update was half-applied")
	}
	if _, err := repo.Upsert(pod("prod", "dup", "10.0.0.1", nil)); err == nil {
		t.Error("duplicate pod IP accepted")
	}

	// Namespace labels change identities; deleting the namespace removes
	// its pods and policies.
	ch, err = repo.Upsert(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "prod", Labels: map[string]string{"env": "prod"}}})
	if err != nil || len(ch.Endpoints) != 3 {
		t.Errorf("namespace relabel: %+v %v", ch, err)
	}
	ls, _ := repo.Snapshot().Labels(repo.Snapshot().Endpoints[policy.EndpointKey{Namespace: "prod", Name: "db"}].Identity)
	if v, _ := ls.Get(identity.SourceK8s, identity.LabelNamespacePrefix+"env"); v != "prod" {
		t.Errorf("namespace label missing from %s", ls)
	}
	ch, err = repo.Delete(policy.ObjectRef{Kind: "Namespace", Name: "prod"})
	if err != nil || len(ch.Removed) != 3 || len(repo.Snapshot().Policies()) != 0 {
		t.Errorf("namespace delete: %+v %v", ch, err)
	}
	if _, err := repo.Delete(policy.ObjectRef{Kind: "Pod", Namespace: "prod", Name: "db"}); err == nil {
		t.Error("deleting a missing pod succeeded")
	}
}

// An L3-only rule covers every protocol, ICMP included; a port rule does
// not cover ICMP.
func TestL3OnlyCoversICMP(t *testing.T) {
	repo := policy.NewRepository(policy.Options{})
	np := allowFromNamespace("prod", "np")
	if _, err := repo.Upsert(pod("prod", "db", "10.0.0.1", map[string]string{"app": "db"}), pod("prod", "c", "10.0.0.2", nil), np); err != nil {
		t.Fatal(err)
	}
	snap := repo.Snapshot()
	db := snap.Endpoints[policy.EndpointKey{Namespace: "prod", Name: "db"}]
	c := snap.Endpoints[policy.EndpointKey{Namespace: "prod", Name: "c"}]
	if d := db.Policy.Ingress.Lookup(snap.Selectors, c.Identity, resolved.ProtoICMP, 0); d.Verdict != resolved.Allow {
		t.Errorf("ICMP: %v", d.Verdict)
	}
	np.Spec.Ingress[0].Ports = []networkingv1.NetworkPolicyPort{{}}
	if _, err := repo.Upsert(np); err != nil {
		t.Fatal(err)
	}
	snap = repo.Snapshot()
	db = snap.Endpoints[policy.EndpointKey{Namespace: "prod", Name: "db"}]
	if d := db.Policy.Ingress.Lookup(snap.Selectors, c.Identity, resolved.ProtoICMP, 0); d.Verdict != resolved.Deny {
		t.Errorf("ICMP with a TCP port rule: %v", d.Verdict)
	}
	if d := db.Policy.Ingress.Lookup(snap.Selectors, c.Identity, resolved.ProtoTCP, 1); d.Verdict != resolved.Allow {
		t.Errorf("TCP with an all-ports TCP rule: %v", d.Verdict)
	}
}

// An identity no pod uses any more leaves selector membership; its number
// stays reserved for its label set.
func TestUnusedIdentityLeavesSelectors(t *testing.T) {
	repo := policy.NewRepository(policy.Options{})
	if _, err := repo.Upsert(pod("prod", "db", "10.0.0.1", map[string]string{"app": "db"}),
		pod("prod", "w", "10.0.0.2", map[string]string{"v": "1"}), allowFromNamespace("prod", "np")); err != nil {
		t.Fatal(err)
	}
	snap := repo.Snapshot()
	old := snap.Endpoints[policy.EndpointKey{Namespace: "prod", Name: "w"}].Identity
	sel := snap.Endpoints[policy.EndpointKey{Namespace: "prod", Name: "db"}].Policy.Ingress.Entries[0].Peer
	if !snap.Selectors.Selects(sel, old) {
		t.Fatal("selector lacks the pod identity")
	}
	ch, err := repo.Upsert(pod("prod", "w", "10.0.0.2", map[string]string{"v": "2"}))
	if err != nil || len(ch.Selectors) == 0 {
		t.Fatalf("relabel: %+v %v", ch, err)
	}
	snap = repo.Snapshot()
	if snap.Selectors.Selects(sel, old) {
		t.Error("the unused identity is still a member")
	}
	if !snap.Selectors.Selects(sel, snap.Endpoints[policy.EndpointKey{Namespace: "prod", Name: "w"}].Identity) {
		t.Error("the new identity is not a member")
	}
	if _, err := repo.Upsert(pod("prod", "w", "10.0.0.2", map[string]string{"v": "1"})); err != nil {
		t.Fatal(err)
	}
	snap = repo.Snapshot()
	if id := snap.Endpoints[policy.EndpointKey{Namespace: "prod", Name: "w"}].Identity; id != old || !snap.Selectors.Selects(sel, id) {
		t.Errorf("label set came back as %v (want %v), member %v", id, old, snap.Selectors.Selects(sel, id))
	}
}

// Snapshots stay valid and consistent while updates go on (run with -race).
func TestConcurrentSnapshots(t *testing.T) {
	repo := policy.NewRepository(policy.Options{})
	if _, err := repo.Upsert(pod("prod", "db", "10.0.0.1", map[string]string{"app": "db"}), allowFromNamespace("prod", "np")); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			if _, err := repo.Upsert(pod("prod", fmt.Sprintf("c%d", i%10), fmt.Sprintf("10.0.1.%d", i%10), map[string]string{"v": fmt.Sprint(i)})); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for {
		select {
		case <-done:
			return
		default:
		}
		snap := repo.Snapshot()
		db := snap.Endpoints[policy.EndpointKey{Namespace: "prod", Name: "db"}]
		for _, ep := range snap.Endpoints {
			if d := db.Policy.Ingress.Lookup(snap.Selectors, ep.Identity, resolved.ProtoTCP, 80); ep.Key.Name != "db" && d.Verdict != resolved.Allow {
				t.Fatalf("snapshot %d: %s denied", snap.Revision, ep.Key)
			}
			snap.IPCache.Lookup(ep.IP)
		}
	}
}

// A dual-stack pod's every address resolves to its identity: traffic of
// its second family must not be taken for the world's. Re-addressing and
// deleting the pod take all of its addresses out again.
func TestDualStackPodAddresses(t *testing.T) {
	repo := policy.NewRepository(policy.Options{})
	p := pod("prod", "web", "10.0.0.2", map[string]string{"app": "web"})
	p.Status.PodIPs = []corev1.PodIP{{IP: "10.0.0.2"}, {IP: "fd00::2"}}
	if _, err := repo.Upsert(p); err != nil {
		t.Fatal(err)
	}
	snap := repo.Snapshot()
	web := snap.Endpoints[policy.EndpointKey{Namespace: "prod", Name: "web"}]
	if len(web.IPs) != 2 || web.IP != netip.MustParseAddr("10.0.0.2") {
		t.Fatalf("addresses: primary %v, all %v", web.IP, web.IPs)
	}
	for _, a := range []string{"10.0.0.2", "fd00::2"} {
		if got := snap.IPCache.Lookup(netip.MustParseAddr(a)); got != web.Identity {
			t.Errorf("ipcache %s: %v, want the pod's identity %v", a, got, web.Identity)
		}
	}

	// Another pod may not claim the second address.
	q := pod("prod", "other", "10.0.0.3", nil)
	q.Status.PodIPs = []corev1.PodIP{{IP: "10.0.0.3"}, {IP: "fd00::2"}}
	if _, err := repo.Upsert(q); err == nil {
		t.Error("a second pod took fd00::2")
	}

	// Re-addressed: the old IPv6 address is world again.
	p.Status.PodIPs = []corev1.PodIP{{IP: "10.0.0.2"}, {IP: "fd00::12"}}
	if _, err := repo.Upsert(p); err != nil {
		t.Fatal(err)
	}
	snap = repo.Snapshot()
	if got := snap.IPCache.Lookup(netip.MustParseAddr("fd00::2")); got != identity.WorldIPv6 {
		t.Errorf("fd00::2 after re-addressing: %v, want world", got)
	}
	if got := snap.IPCache.Lookup(netip.MustParseAddr("fd00::12")); got != web.Identity {
		t.Errorf("fd00::12: %v, want %v", got, web.Identity)
	}

	if _, err := repo.Delete(policy.ObjectRef{Kind: "Pod", Namespace: "prod", Name: "web"}); err != nil {
		t.Fatal(err)
	}
	snap = repo.Snapshot()
	for _, a := range []string{"10.0.0.2", "fd00::12"} {
		if got := snap.IPCache.Lookup(netip.MustParseAddr(a)); got == web.Identity {
			t.Errorf("%s still resolves to the deleted pod", a)
		}
	}
}
