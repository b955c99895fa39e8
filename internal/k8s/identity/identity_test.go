package identity_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/k8s/crds"
	k8sidentity "github.com/bulwark-net/bulwark/internal/k8s/identity"
	"github.com/bulwark-net/bulwark/internal/k8s/k8stest"
)

type env struct {
	dyn dynamic.Interface
	ctx context.Context
}

func start(t testing.TB) env {
	c := k8stest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := crds.Install(ctx, c.Config); err != nil {
		t.Fatal(err)
	}
	return env{dynamic.NewForConfigOrDie(c.Config), ctx}
}

func (e env) numbering(t testing.TB, o k8sidentity.Options) *k8sidentity.Numbering {
	n, err := k8sidentity.New(e.dyn, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(e.ctx); err != nil {
		t.Fatal(err)
	}
	return n
}

func pod(app string) identity.Labels {
	return identity.PodLabels(map[string]string{"app": app}, identity.PodContext{Namespace: "demo", ServiceAccount: "default"})
}

// waitKnown waits until n's cache has learned num (a watch event).
func waitKnown(t *testing.T, n *k8sidentity.Numbering, ls identity.Labels, num identity.NumericIdentity) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if got, ok := n.Lookup(ls); ok && got == num {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	got, ok := n.Lookup(ls)
	t.Fatalf("cache never learned %s = %d (has %d, %v)", ls, num, got, ok)
}

func TestNumberCreatesCiliumIdentity(t *testing.T) {
	e := start(t)
	a := e.numbering(t, k8sidentity.Options{})
	web := pod("web")
	num, err := a.Number(web)
	if err != nil {
		t.Fatal(err)
	}
	if num < identity.MinCluster || num >= identity.LocalScope {
		t.Fatalf("number %d outside the cluster range", num)
	}
	if num != a.Candidate(web, 0) {
		t.Errorf("free space: got %d, want the first candidate %d", num, a.Candidate(web, 0))
	}
	if again, err := a.Number(web); err != nil || again != num {
		t.Fatalf("second Number = %d, %v; want %d", again, err, num)
	}
	obj, err := e.dyn.Resource(k8sidentity.Resource).Get(e.ctx, strconv.Itoa(int(num)), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sec, _, _ := unstructured.NestedStringMap(obj.Object, "security-labels")
	if sec["k8s:app"] != "web" || sec["k8s:io.kubernetes.pod.namespace"] != "demo" {
		t.Errorf("security-labels %v, want Cilium's source:key format", sec)
	}
	if l := obj.GetLabels(); l["app"] != "web" || l["io.kubernetes.pod.namespace"] != "demo" {
		t.Errorf("metadata.labels %v", l)
	}
	// A second agent started later knows it from its cache.
	b := e.numbering(t, k8sidentity.Options{})
	if got, ok := b.Lookup(web); !ok || got != num {
		t.Fatalf("second agent's cache: %d, %v; want %d", got, ok, num)
	}
	if got, err := b.Number(web); err != nil || got != num {
		t.Fatalf("second agent Number = %d, %v; want %d", got, err, num)
	}
	if ls, ok := b.Labels(num); !ok || ls.String() != web.String() {
		t.Errorf("Labels(%d) = %s, %v", num, ls, ok)
	}
	// Through the node allocator.
	alloc := identity.NewClusterAllocator(b)
	if id, _, err := alloc.Allocate(web); err != nil || id != num {
		t.Fatalf("allocator: %d, %v; want %d", id, err, num)
	}
}

// A candidate held by another label set is skipped; an object Cilium
// created for a set (any number) is adopted.
func TestNumberSkipsTakenAndAdoptsExisting(t *testing.T) {
	e := start(t)
	a := e.numbering(t, k8sidentity.Options{})
	web, other, cil := pod("web"), pod("other"), pod("from-cilium")
	taken := a.Candidate(web, 0)
	cilNum := identity.NumericIdentity(300)
	for num, ls := range map[identity.NumericIdentity]identity.Labels{taken: other, cilNum: cil} {
		sec := map[string]any{}
		for k, v := range k8sidentity.SecurityLabels(ls) {
			sec[k] = v
		}
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "cilium.io/v2", "kind": "CiliumIdentity",
			"metadata":        map[string]any{"name": strconv.Itoa(int(num))},
			"security-labels": sec,
		}}
		if _, err := e.dyn.Resource(k8sidentity.Resource).Create(e.ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitKnown(t, a, cil, cilNum)
	if got, err := a.Number(web); err != nil || got != a.Candidate(web, 1) {
		t.Fatalf("Number(web) = %d, %v; want the second candidate %d (the first is held)", got, err, a.Candidate(web, 1))
	}
	if got, err := a.Number(other); err != nil || got != taken {
		t.Fatalf("Number(other) = %d, %v; want its existing %d", got, err, taken)
	}
	if got, err := a.Number(cil); err != nil || got != cilNum {
		t.Fatalf("Number(from-cilium) = %d, %v; want Cilium's %d", got, err, cilNum)
	}
}

// A stale cache: the candidate was taken by another set after this agent's
// cache last heard; the create conflict makes it read the object and move
// on, and the same set's object created elsewhere is adopted.
func TestNumberCreateConflict(t *testing.T) {
	e := start(t)
	// Small range so that the race is for the same few numbers.
	o := k8sidentity.Options{Min: 1000, Max: 1004}
	a := e.numbering(t, o)
	b := e.numbering(t, o)
	x := pod("x")
	nb, err := b.Number(x)
	if err != nil {
		t.Fatal(err)
	}
	// a's cache may or may not have seen it; either way it converges.
	na, err := a.Number(x)
	if err != nil || na != nb {
		t.Fatalf("agents disagree: a %d (%v), b %d", na, err, nb)
	}
	// Fill the range; the next set fails with a clear error.
	var err2 error
	for i := 0; i < 50 && err2 == nil; i++ {
		_, err2 = a.Number(pod(fmt.Sprint("fill-", i)))
	}
	if err2 == nil {
		t.Fatal("a range of 4 numbers took 51 label sets")
	}
	t.Logf("full range: %v", err2)
}

// Two agents racing for the same label sets converge on one number per set
// and one object per set.
func TestConcurrentAgentsConverge(t *testing.T) {
	e := start(t)
	agents := []*k8sidentity.Numbering{e.numbering(t, k8sidentity.Options{}), e.numbering(t, k8sidentity.Options{})}
	const sets = 200
	got := make([][sets]identity.NumericIdentity, len(agents))
	var wg sync.WaitGroup
	errs := make(chan error, len(agents))
	for ai, ag := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < sets; i++ {
				num, err := ag.Number(pod(fmt.Sprint("app-", i)))
				if err != nil {
					errs <- err
					return
				}
				got[ai][i] = num
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got[0] != got[1] {
		for i := range sets {
			if got[0][i] != got[1][i] {
				t.Errorf("app-%d: agent 0 has %d, agent 1 has %d", i, got[0][i], got[1][i])
			}
		}
	}
	list, err := e.dyn.Resource(k8sidentity.Resource).List(e.ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	perSet := map[string]int{}
	for _, u := range list.Items {
		sec, _, _ := unstructured.NestedStringMap(u.Object, "security-labels")
		ls, err := k8sidentity.FromSecurityLabels(sec)
		if err != nil {
			t.Fatal(err)
		}
		perSet[ls.String()]++
	}
	if len(list.Items) != sets {
		t.Errorf("%d CiliumIdentity objects for %d label sets", len(list.Items), sets)
	}
	for k, c := range perSet {
		if c != 1 {
			t.Errorf("%d objects for %s", c, k)
		}
	}
}

func TestOptionsValidated(t *testing.T) {
	for _, o := range []k8sidentity.Options{{Min: 10, Max: 20}, {Min: 500, Max: 400}, {Max: identity.LocalScope + 1}} {
		if _, err := k8sidentity.New(nil, o); err == nil {
			t.Errorf("New(%+v) accepted a bad range", o)
		}
	}
}

func TestNumberBeforeStart(t *testing.T) {
	n, err := k8sidentity.New(dynamic.New(nil), k8sidentity.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Number(pod("web")); err == nil {
		t.Fatal("Number before Start succeeded")
	}
}

// waitMarked waits until n's cache has seen num's unused mark (or its
// removal, want false).
func waitMarked(t *testing.T, e env, num identity.NumericIdentity, want bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		u, err := e.dyn.Resource(k8sidentity.Resource).Get(e.ctx, strconv.Itoa(int(num)), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, has := u.GetAnnotations()[k8sidentity.UnusedSinceAnnotation]
		if has == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("identity %d: marked %v, want %v", num, has, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCollect(t *testing.T) {
	e := start(t)
	n := e.numbering(t, k8sidentity.Options{})
	used, unused, revived := pod("used"), pod("unused"), pod("revived")
	nums := map[string]identity.NumericIdentity{}
	for _, ls := range []identity.Labels{used, unused, revived} {
		num, err := n.Number(ls)
		if err != nil {
			t.Fatal(err)
		}
		nums[ls.String()] = num
		waitKnown(t, n, ls, num)
	}
	inUse := func(num identity.NumericIdentity) bool { return num == nums[used.String()] }
	t0 := time.Now()
	grace := time.Hour
	if del, err := n.Collect(e.ctx, k8sidentity.CollectOptions{InUse: inUse, Grace: grace, Now: t0}); err != nil || len(del) != 0 {
		t.Fatalf("first Collect deleted %v, %v; want only marks", del, err)
	}
	waitMarked(t, e, nums[unused.String()], true)
	waitMarked(t, e, nums[revived.String()], true)
	waitMarked(t, e, nums[used.String()], false)
	// Wait for the cache to hold both marks (Collect works from it).
	for deadline := time.Now().Add(30 * time.Second); ; {
		// Number of a marked set unmarks it (and returns the same number).
		if time.Now().After(deadline) {
			t.Fatal("cache never saw the marks")
		}
		if n.Marked(nums[unused.String()]) && n.Marked(nums[revived.String()]) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got, err := n.Number(revived); err != nil || got != nums[revived.String()] {
		t.Fatalf("Number(revived) = %d, %v; want %d", got, err, nums[revived.String()])
	}
	waitMarked(t, e, nums[revived.String()], false)
	// Before the grace: nothing deleted.
	if del, err := n.Collect(e.ctx, k8sidentity.CollectOptions{InUse: inUse, Grace: grace, Now: t0.Add(grace / 2)}); err != nil || len(del) != 0 {
		t.Fatalf("Collect within grace deleted %v, %v", del, err)
	}
	// After the grace: only the unused, still-marked one. (revived was
	// re-marked by the previous Collect at t0+grace/2, so it is kept.)
	del, err := n.Collect(e.ctx, k8sidentity.CollectOptions{InUse: inUse, Grace: grace, Now: t0.Add(grace)})
	if err != nil {
		t.Fatal(err)
	}
	if len(del) != 1 || del[0] != nums[unused.String()] {
		t.Fatalf("Collect deleted %v, want [%d]", del, nums[unused.String()])
	}
	list, err := e.dyn.Resource(k8sidentity.Resource).List(e.ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 2 {
		t.Fatalf("%d identities left, want 2", len(list.Items))
	}
	if _, err := n.Collect(e.ctx, k8sidentity.CollectOptions{}); err == nil {
		t.Fatal("Collect without InUse accepted")
	}
}
