package identity

import (
	"net/netip"
	"strings"
	"testing"
)

func TestAllocatorStableAndScoped(t *testing.T) {
	a := NewAllocator()
	web := PodLabels(map[string]string{"app": "web"}, PodContext{Namespace: "demo", NamespaceLabels: map[string]string{"team": "red"}})
	db := PodLabels(map[string]string{"app": "db"}, PodContext{Namespace: "demo"})
	id1, created, err := a.Allocate(web)
	if err != nil || !created || id1 != MinCluster {
		t.Fatalf("first allocation: %v %v %v", id1, created, err)
	}
	id2, _, _ := a.Allocate(db)
	again, created, _ := a.Allocate(PodLabels(map[string]string{"app": "web"}, PodContext{Namespace: "demo", NamespaceLabels: map[string]string{"team": "red"}}))
	if again != id1 || created || id2 == id1 {
		t.Fatalf("identities not stable per label set: %v %v %v", id1, id2, again)
	}
	cidr, created, _ := a.AllocateCIDR(netip.MustParsePrefix("10.1.0.0/16"))
	if !cidr.IsLocal() || !created || cidr.IsReserved() {
		t.Fatalf("CIDR identity %v not local", cidr)
	}
	if id, ok := a.LookupLabels(mustReserved(t, Host)); !ok || id != Host {
		t.Fatalf("reserved host not registered: %v", id)
	}
	ls, _ := a.Lookup(id1)
	for _, want := range []string{"k8s:app=web", "k8s:io.kubernetes.pod.namespace=demo",
		"k8s:io.cilium.k8s.namespace.labels.team=red", "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=demo",
		"k8s:io.cilium.k8s.policy.cluster=default"} {
		if !strings.Contains(ls.String(), want) {
			t.Errorf("labels %s lack %s", ls, want)
		}
	}
}

func mustReserved(t *testing.T, id NumericIdentity) Labels {
	ls, ok := ReservedLabels(id)
	if !ok {
		t.Fatalf("no labels for %v", id)
	}
	return ls
}

func TestCIDRLabels(t *testing.T) {
	ls := CIDRLabels(netip.MustParsePrefix("10.1.2.0/24"))
	for _, want := range []string{"cidr:10.1.2.0/24", "cidr:10.0.0.0/8", "cidr:0.0.0.0/0", "reserved:world-ipv4"} {
		if !strings.Contains(","+ls.String()+",", ","+want+",") {
			t.Errorf("%s lacks %s", ls, want)
		}
	}
	if strings.Contains(ls.String(), "cidr:10.1.3.0/24") {
		t.Errorf("%s has a prefix that does not contain 10.1.2.0/24", ls)
	}
	if len(ls) != 26 { // /24../0 and the world label
		t.Errorf("%d labels, want 26", len(ls))
	}
	v6 := CIDRLabels(netip.MustParsePrefix("2001:db8::/32"))
	if !strings.Contains(v6.String(), "cidr:2001-db8--/32") || strings.Count(v6.String(), "cidr:") != 33 {
		t.Errorf("v6 labels %s", v6)
	}
	w, _ := ReservedLabels(WorldIPv4)
	if !strings.Contains(w.String(), "cidr:0.0.0.0/0") {
		t.Errorf("world-ipv4 labels %s lack cidr:0.0.0.0/0", w)
	}
}

func TestRestore(t *testing.T) {
	a := NewAllocator()
	web := PodLabels(map[string]string{"app": "web"}, PodContext{Namespace: "demo"})
	if err := a.Restore(300, web); err != nil {
		t.Fatal(err)
	}
	if id, _, _ := a.Allocate(web); id != 300 {
		t.Fatalf("restored label set allocated as %v", id)
	}
	next, _, _ := a.Allocate(PodLabels(nil, PodContext{Namespace: "demo"}))
	if next != 301 {
		t.Fatalf("next allocation %v, want 301", next)
	}
	if err := a.Restore(300, PodLabels(nil, PodContext{Namespace: "x"})); err == nil {
		t.Error("restoring a taken number succeeded")
	}
	if err := a.Restore(Host, web); err == nil {
		t.Error("restoring a reserved number succeeded")
	}
}

func TestPodLabelsDropIdentityIrrelevantLabels(t *testing.T) {
	ctx := PodContext{Namespace: "demo", ServiceAccount: "web"}
	base := PodLabels(map[string]string{"app": "web", "app.kubernetes.io/name": "web"}, ctx)
	noisy := PodLabels(map[string]string{
		"app": "web", "app.kubernetes.io/name": "web",
		"pod-template-hash": "5d8f7c9b6", "controller-revision-hash": "web-7c9", "pod-template-generation": "3",
		"statefulset.kubernetes.io/pod-name": "web-0", "apps.kubernetes.io/pod-index": "0",
		"batch.kubernetes.io/controller-uid": "u1", "batch.kubernetes.io/job-name": "j", "controller-uid": "u1", "job-name": "j",
		"topology.beta.kubernetes.io/zone": "z", "kubernetes.io/arch": "amd64",
		// forged derived labels: the real ones come from the context
		"io.kubernetes.pod.namespace": "other", "io.cilium.k8s.policy.serviceaccount": "admin",
	}, ctx)
	if base.String() != noisy.String() {
		t.Fatalf("identity-irrelevant labels changed the identity:\n%s\n%s", base, noisy)
	}
	for _, want := range []string{"k8s:app=web", "k8s:app.kubernetes.io/name=web", "k8s:io.cilium.k8s.policy.serviceaccount=web", "k8s:io.kubernetes.pod.namespace=demo"} {
		if !strings.Contains(noisy.String(), want) {
			t.Errorf("labels %s lack %s", noisy, want)
		}
	}
	for _, k := range []string{"app", "tier", "app.kubernetes.io/component", "version"} {
		if !IsIdentityRelevant(k) {
			t.Errorf("%s should be identity-relevant", k)
		}
	}
	in := map[string]string{"app": "web", "pod-template-hash": "x"}
	if got := IdentityLabels(in); len(got) != 1 || got["app"] != "web" || len(in) != 2 {
		t.Errorf("IdentityLabels(%v) = %v", in, got)
	}
}

func TestIsSelectableKey(t *testing.T) {
	for key, want := range map[string]bool{
		"app": true, LabelNamespace: true, LabelNamespacePrefix + "team": true, LabelServiceAccount: true, LabelCluster: true,
		"pod-template-hash": false, "io.kubernetes.pod.name": false, "io.cilium.k8s.policy.other": false, "statefulset.kubernetes.io/pod-name": false,
	} {
		if got := IsSelectableKey(key); got != want {
			t.Errorf("IsSelectableKey(%q) = %v, want %v", key, got, want)
		}
	}
}
