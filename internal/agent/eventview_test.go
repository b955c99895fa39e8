package agent

import (
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/bulwark-net/bulwark/internal/datapath"
	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/observer"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/policytest"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// viewFixture is a node without machine (no datapath, no sandbox) whose
// repository holds a synthetic cluster: the inputs the agent's resolver
// reads, set the way syncDatapath sets them.
type viewFixture struct {
	n     *node
	state *policytest.State
	// rules is what the datapath's rule table holds (every synced
	// compilation merged, later ones winning).
	rules map[uint32]datapath.RuleInfo
}

// newViewFixture loads a synthetic cluster into a repository, gives every
// pod an endpoint ID and attaches all but every fifth pod (unattached pods
// still resolve by address), then syncs: compiles the attached endpoints'
// policies as the datapath does and publishes the view.
func newViewFixture(tb testing.TB, sz policytest.Size) *viewFixture {
	tb.Helper()
	st := policytest.Build(sz)
	repo := policy.NewRepository(policy.Options{})
	if _, err := repo.Upsert(st.Objects()...); err != nil {
		tb.Fatal(err)
	}
	ids := &endpointIDs{file: filepath.Join(tb.TempDir(), "endpoints.json"), byPod: map[string]uint32{}}
	n := &node{repo: repo, ids: ids, attached: map[uint32]string{}}
	for i, p := range st.Pods {
		key := podKey(p.Namespace, p.Name)
		id := uint32(100 + i)
		ids.byPod[key] = id
		if i%5 != 4 {
			n.attached[id] = key
		}
	}
	f := &viewFixture{n: n, state: st, rules: map[uint32]datapath.RuleInfo{}}
	f.sync(tb)
	return f
}

// sync does what node.syncDatapath does around the datapath: compile the
// attached endpoints' policies, record the rules, publish the snapshot.
func (f *viewFixture) sync(tb testing.TB) {
	tb.Helper()
	n := f.n
	snap := n.repo.Snapshot()
	eps := map[uint32]*resolved.EndpointPolicy{}
	n.mu.Lock()
	for id, key := range n.attached {
		ns, name := splitKey(key)
		if ep := snap.Endpoints[policy.EndpointKey{Namespace: ns, Name: name}]; ep != nil && ep.Policy != nil {
			eps[id] = ep.Policy
		}
	}
	n.mu.Unlock()
	ipc := map[netip.Prefix]identity.NumericIdentity{}
	for _, e := range snap.IPCache.Entries() {
		ipc[e.Prefix] = e.Identity
	}
	c, err := datapath.Compile(datapath.State{Endpoints: eps, Selectors: snap.Selectors, IPCache: ipc, Revision: snap.Revision})
	if err != nil {
		tb.Fatal(err)
	}
	maps.Copy(f.rules, c.Rules)
	n.addRules(c)
	n.mu.Lock()
	n.snap = snap
	n.mu.Unlock()
	n.publishEventView()
}

func (f *viewFixture) setAttached(id uint32, key string) {
	f.n.mu.Lock()
	if key == "" {
		delete(f.n.attached, id)
	} else {
		f.n.attached[id] = key
	}
	f.n.mu.Unlock()
	f.n.publishEventView()
}

// directResolver is the resolver computed from the node's state on every
// call, under the node's lock, as the agent did before it published views:
// the reference the view must agree with, and the cost it removes.
type directResolver struct {
	n     *node
	mu    *sync.Mutex // the datapath's lock around its rule table
	rules map[uint32]datapath.RuleInfo
}

func (r directResolver) snapshot() *policy.Snapshot {
	r.n.mu.Lock()
	defer r.n.mu.Unlock()
	return r.n.snap
}

func directEndpointInfo(id uint32, ep *policy.Endpoint) observer.EndpointInfo {
	labels := make([]string, 0, len(ep.Labels))
	for _, l := range ep.Labels {
		labels = append(labels, l.String())
	}
	return observer.EndpointInfo{ID: id, Identity: ep.Identity, Namespace: ep.Key.Namespace, PodName: ep.Key.Name, Labels: labels}
}

func (r directResolver) EndpointByID(id uint32) (observer.EndpointInfo, bool) {
	r.n.mu.Lock()
	key, ok := r.n.attached[id]
	snap := r.n.snap
	r.n.mu.Unlock()
	if !ok || snap == nil {
		return observer.EndpointInfo{}, false
	}
	ns, name := splitKey(key)
	ep := snap.Endpoints[policy.EndpointKey{Namespace: ns, Name: name}]
	if ep == nil {
		return observer.EndpointInfo{}, false
	}
	return directEndpointInfo(id, ep), true
}

func (r directResolver) EndpointByIP(ip netip.Addr) (observer.EndpointInfo, bool) {
	snap := r.snapshot()
	if snap == nil {
		return observer.EndpointInfo{}, false
	}
	key, ok := snap.IPCache.Endpoint(ip)
	if !ok {
		return observer.EndpointInfo{}, false
	}
	ep := snap.Endpoints[key]
	if ep == nil {
		return observer.EndpointInfo{}, false
	}
	id, _ := r.n.ids.lookup(key.String())
	return directEndpointInfo(id, ep), true
}

func (r directResolver) IdentityLabels(id identity.NumericIdentity) []string {
	snap := r.snapshot()
	if snap == nil {
		return nil
	}
	ls, ok := snap.Labels(id)
	if !ok {
		return nil
	}
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.String()
	}
	return out
}

func (r directResolver) RulePolicies(ruleID uint32) []resolved.PolicyRef {
	r.mu.Lock()
	defer r.mu.Unlock()
	info, ok := r.rules[ruleID]
	if !ok {
		return nil
	}
	return append([]resolved.PolicyRef(nil), info.Policies...)
}

func (r directResolver) RuleMatchType(ruleID uint32) event.MatchType {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rules[ruleID].MatchType
}

func (r directResolver) SelectingPolicies(endpointID uint32, dir resolved.Direction) []resolved.PolicyRef {
	r.n.mu.Lock()
	key, ok := r.n.attached[endpointID]
	snap := r.n.snap
	r.n.mu.Unlock()
	if !ok || snap == nil {
		return nil
	}
	ns, name := splitKey(key)
	ep := snap.Endpoints[policy.EndpointKey{Namespace: ns, Name: name}]
	if ep == nil || ep.Policy == nil {
		return nil
	}
	return ep.Policy.Dir(dir).Selecting
}

func (f *viewFixture) direct() directResolver {
	return directResolver{n: f.n, mu: &sync.Mutex{}, rules: f.rules}
}

var viewTestSize = policytest.Size{Namespaces: 4, LabelSets: 20, Pods: 60, Policies: 40}

// assertSameAsDirect compares every answer of the agent's resolver with
// the direct computation: every endpoint ID attached or not, every pod
// address (plain and IPv4-mapped) and some that are no pod's, every
// identity, every rule id.
func assertSameAsDirect(t *testing.T, f *viewFixture) {
	t.Helper()
	got, want := resolver{f.n}, f.direct()
	same := func(what string, g, w any) {
		t.Helper()
		if !reflect.DeepEqual(g, w) {
			t.Errorf("%s: cached %v, direct %v", what, g, w)
		}
	}
	snap := want.snapshot()
	var epIDs []uint32
	for _, id := range f.n.ids.byPod {
		epIDs = append(epIDs, id)
	}
	epIDs = append(epIDs, 0, 1, 99999)
	for _, id := range epIDs {
		gi, gok := got.EndpointByID(id)
		wi, wok := want.EndpointByID(id)
		same(fmt.Sprintf("EndpointByID(%d)", id), []any{gi, gok}, []any{wi, wok})
		for _, dir := range []resolved.Direction{resolved.Ingress, resolved.Egress} {
			same(fmt.Sprintf("SelectingPolicies(%d, %v)", id, dir), got.SelectingPolicies(id, dir), want.SelectingPolicies(id, dir))
		}
	}
	addrs := []netip.Addr{netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("fd00::1"), {}}
	for _, e := range snap.IPCache.Entries() {
		a := e.Prefix.Addr()
		addrs = append(addrs, a)
		if a.Is4() {
			addrs = append(addrs, netip.AddrFrom16(a.As16()))
		}
	}
	found := 0
	for _, a := range addrs {
		gi, gok := got.EndpointByIP(a)
		wi, wok := want.EndpointByIP(a)
		same(fmt.Sprintf("EndpointByIP(%s)", a), []any{gi, gok}, []any{wi, wok})
		if gok {
			found++
		}
	}
	if found == 0 {
		t.Error("no address resolved to a pod")
	}
	idents := []identity.NumericIdentity{identity.Unknown, identity.NumericIdentity(1 << 23)}
	for id := range f.n.repo.Allocator().All() {
		idents = append(idents, id)
	}
	for _, id := range idents {
		same(fmt.Sprintf("IdentityLabels(%d)", id), got.IdentityLabels(id), want.IdentityLabels(id))
	}
	ruleIDs := []uint32{0, 1}
	for id := range f.rules {
		ruleIDs = append(ruleIDs, id)
	}
	for _, id := range ruleIDs {
		same(fmt.Sprintf("RulePolicies(%d)", id), got.RulePolicies(id), want.RulePolicies(id))
		same(fmt.Sprintf("RuleMatchType(%d)", id), got.RuleMatchType(id), want.RuleMatchType(id))
	}
}

// The agent's resolver names rule match types (policy_match_type).
var _ observer.MatchTyper = resolver{}

func TestEventViewAgreesWithDirectComputation(t *testing.T) {
	t.Parallel()
	f := newViewFixture(t, viewTestSize)
	if len(f.rules) == 0 {
		t.Fatal("fixture compiled no rules")
	}
	matched := false
	for id := range f.rules {
		matched = matched || resolver{f.n}.RuleMatchType(id) != event.MatchNone
	}
	if !matched {
		t.Error("no rule has a match type")
	}
	assertSameAsDirect(t, f)
}

func TestEventViewBeforeFirstSyncResolvesNothing(t *testing.T) {
	t.Parallel()
	n := &node{attached: map[uint32]string{1: "a/b"}}
	r := resolver{n}
	if _, ok := r.EndpointByID(1); ok {
		t.Error("endpoint resolved before any view")
	}
	n.publishEventView()
	if _, ok := r.EndpointByID(1); ok {
		t.Error("endpoint resolved before any snapshot")
	}
	if ls := r.IdentityLabels(identity.World); ls != nil {
		t.Errorf("identity labels %v before any snapshot", ls)
	}
}

func TestEventViewFollowsSnapshotsAndAttachments(t *testing.T) {
	t.Parallel()
	f := newViewFixture(t, viewTestSize)
	r := resolver{f.n}
	pod := f.state.Pods[0]
	key := podKey(pod.Namespace, pod.Name)
	id := f.n.ids.byPod[key]
	before, ok := r.EndpointByID(id)
	if !ok {
		t.Fatalf("pod %s (endpoint %d) does not resolve", key, id)
	}

	// New labels: a new identity and label strings, once synced.
	changed := pod.DeepCopy()
	changed.Labels["release"] = "canary"
	if _, err := f.n.repo.Upsert(changed); err != nil {
		t.Fatal(err)
	}
	if now, _ := r.EndpointByID(id); !reflect.DeepEqual(now, before) {
		t.Errorf("view changed before the sync: %v", now)
	}
	f.sync(t)
	after, ok := r.EndpointByID(id)
	if !ok || after.Identity == before.Identity || !slices.Contains(after.Labels, "k8s:release=canary") {
		t.Errorf("after relabel: %v (ok %v), before %v", after, ok, before)
	}
	if ls := r.IdentityLabels(after.Identity); !slices.Equal(ls, after.Labels) {
		t.Errorf("labels of new identity %d: %v, want %v", after.Identity, ls, after.Labels)
	}
	if byIP, ok := r.EndpointByIP(netip.MustParseAddr(pod.Status.PodIP)); !ok || !reflect.DeepEqual(byIP, after) {
		t.Errorf("by address: %v (ok %v), want %v", byIP, ok, after)
	}
	assertSameAsDirect(t, f)

	// Detaching: the endpoint ID no longer resolves; its address still
	// does (the pod is in the snapshot).
	f.setAttached(id, "")
	if info, ok := r.EndpointByID(id); ok {
		t.Errorf("detached endpoint %d resolves to %v", id, info)
	}
	if ps := r.SelectingPolicies(id, resolved.Ingress); ps != nil {
		t.Errorf("detached endpoint %d has selecting policies %v", id, ps)
	}
	assertSameAsDirect(t, f)

	// Attaching a pod that was not: visible at once, before any sync.
	var unattached *corev1.Pod
	for i, p := range f.state.Pods {
		if i%5 == 4 {
			unattached = p
			break
		}
	}
	ukey := podKey(unattached.Namespace, unattached.Name)
	uid := f.n.ids.byPod[ukey]
	if _, ok := r.EndpointByID(uid); ok {
		t.Fatalf("unattached endpoint %d resolves", uid)
	}
	f.setAttached(uid, ukey)
	if info, ok := r.EndpointByID(uid); !ok || info.PodName != unattached.Name || info.ID != uid {
		t.Errorf("attached endpoint %d: %v (ok %v)", uid, info, ok)
	}
	assertSameAsDirect(t, f)

	// A pod leaving the repository leaves the view with the next sync.
	if _, err := f.n.repo.Delete(policy.ObjectRef{Kind: "Pod", Namespace: unattached.Namespace, Name: unattached.Name}); err != nil {
		t.Fatal(err)
	}
	f.sync(t)
	if info, ok := r.EndpointByIP(netip.MustParseAddr(unattached.Status.PodIP)); ok {
		t.Errorf("deleted pod's address resolves to %v", info)
	}
	assertSameAsDirect(t, f)
}

// TestEventViewReusesUnchangedStrings checks the incremental build: an
// endpoint or identity the previous view had keeps its label slice.
func TestEventViewReusesUnchangedStrings(t *testing.T) {
	t.Parallel()
	f := newViewFixture(t, viewTestSize)
	r := resolver{f.n}
	id := f.n.ids.byPod[podKey(f.state.Pods[1].Namespace, f.state.Pods[1].Name)]
	a, _ := r.EndpointByID(id)
	la := r.IdentityLabels(a.Identity)
	f.setAttached(99999, "")
	b, _ := r.EndpointByID(id)
	lb := r.IdentityLabels(b.Identity)
	if len(a.Labels) == 0 || &a.Labels[0] != &b.Labels[0] || &la[0] != &lb[0] {
		t.Error("a republished view formatted unchanged labels again")
	}
}

func TestEventPathResolverAllocatesNothing(t *testing.T) {
	f := newViewFixture(t, viewTestSize)
	r := resolver{f.n}
	pod := f.state.Pods[2]
	ip := netip.MustParseAddr(pod.Status.PodIP)
	id := f.n.ids.byPod[podKey(pod.Namespace, pod.Name)]
	var rule uint32
	for k := range f.rules {
		rule = k
		break
	}
	info, ok := r.EndpointByID(id)
	if !ok {
		t.Fatal("endpoint does not resolve")
	}
	allocs := testing.AllocsPerRun(100, func() {
		r.EndpointByID(id)
		r.EndpointByIP(ip)
		r.IdentityLabels(info.Identity)
		r.IdentityLabels(identity.World)
		r.RulePolicies(rule)
		r.RuleMatchType(rule)
		r.SelectingPolicies(id, resolved.Ingress)
	})
	if allocs != 0 {
		t.Errorf("resolver allocates %v times per event", allocs)
	}
}

// TestEventViewConcurrentReadsAndPublishes runs the event path against
// publications (meaningful under -race).
func TestEventViewConcurrentReadsAndPublishes(t *testing.T) {
	t.Parallel()
	f := newViewFixture(t, viewTestSize)
	r := resolver{f.n}
	pod := f.state.Pods[3]
	key := podKey(pod.Namespace, pod.Name)
	id := f.n.ids.byPod[key]
	ip := netip.MustParseAddr(pod.Status.PodIP)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				if info, ok := r.EndpointByIP(ip); !ok || info.PodName != pod.Name {
					t.Errorf("by address: %v (ok %v)", info, ok)
					return
				}
				r.EndpointByID(id)
				r.SelectingPolicies(id, resolved.Egress)
			}
		}()
	}
	for i := range 50 {
		if i%2 == 0 {
			f.setAttached(id, "")
		} else {
			f.setAttached(id, key)
		}
	}
	f.sync(t)
	close(done)
	wg.Wait()
}
