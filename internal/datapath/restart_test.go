package datapath

import (
	"net/netip"
	"os"
	"reflect"
	"testing"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/policytest"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// stateOf is what the agent loads for a snapshot: endpoint i+1 is the
// i-th endpoint key.
func stateOf(snap *policy.Snapshot) State {
	st := State{Endpoints: map[uint32]*resolved.EndpointPolicy{}, Selectors: snap.Selectors,
		IPCache: map[netip.Prefix]identity.NumericIdentity{}, Revision: snap.Revision}
	for i, k := range snap.EndpointKeys() {
		st.Endpoints[uint32(i+1)] = snap.Endpoints[k].Policy
	}
	for _, e := range snap.IPCache.Entries() {
		st.IPCache[e.Prefix] = e.Identity
	}
	return st
}

type mapContent struct {
	ip     map[bpfBwIpcacheKey]uint32
	sel    map[identity.NumericIdentity][]resolved.SelectorID
	pol    map[uint32]map[bpfBwPolicyKey]bpfBwPolicyValue
	tables map[uint32]uint32 // endpoint → active table id
}

func readMaps(t *testing.T, dp *Datapath, eps int) mapContent {
	t.Helper()
	var c mapContent
	var err error
	if c.ip, err = dp.readIPCache(); err != nil {
		t.Fatal(err)
	}
	if c.sel, err = dp.readSelectorLists(); err != nil {
		t.Fatal(err)
	}
	if c.pol, err = dp.scanPolicy(); err != nil {
		t.Fatal(err)
	}
	c.tables = map[uint32]uint32{}
	for id := uint32(1); id <= uint32(eps); id++ {
		d, err := dp.DumpEndpoint(id)
		if err != nil {
			t.Fatal(err)
		}
		c.tables[id] = d.TableID
	}
	return c
}

// An agent restarted on the same objects is a no-op for the datapath:
// the repository it rebuilds at once (objects in another order, with the
// identities the previous run persisted) computes the same selector IDs,
// identities and tables as the one that reached those objects through a
// history of changes, so its first Sync switches no table, rewrites no
// map and leaves the revision (hence every conntrack entry) alone.
func TestRestartedAgentSyncChangesNothing(t *testing.T) {
	requireRoot(t)
	st := policytest.Build(policytest.Size{Namespaces: 3, LabelSets: 12, Pods: 24, Policies: 40})
	before := policy.NewRepository(policy.Options{})
	for _, batch := range st.History(11) {
		if _, err := before.Upsert(batch...); err != nil {
			t.Fatal(err)
		}
	}
	snap := before.Snapshot()
	keys := snap.EndpointKeys()

	dir := "/sys/fs/bpf/bulwark-test-" + randSuffix()
	t.Cleanup(func() { os.RemoveAll(dir) })
	sizes := Sizes{Endpoints: 64, IPCache: 4096, IdentitySelectors: 4096, Policy: 65536, Conntrack: 4096}
	dp, err := Open(Options{PinDir: dir, Sizes: sizes, ConntrackGCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range keys {
		registerEndpoint(t, dp, Endpoint{ID: uint32(i + 1), IfIndex: 100000 + i, Identity: snap.Endpoints[k].Identity})
	}
	if err := dp.Sync(stateOf(snap)); err != nil {
		t.Fatal(err)
	}
	rev := dp.Revision()
	loaded := readMaps(t, dp, len(keys))
	if len(loaded.pol) != len(keys) || len(loaded.sel) == 0 {
		t.Fatalf("first sync loaded %d tables, %d selector lists", len(loaded.pol), len(loaded.sel))
	}
	// What the agent persists: the identities (selector IDs need no
	// persisting here: they come from the selectors).
	saved := before.Allocator().All()
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}

	dp2, err := Open(Options{PinDir: dir, Sizes: sizes, ConntrackGCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dp2.Destroy(); err != nil {
			t.Errorf("destroy: %v", err)
		}
	})
	alloc := identity.NewAllocator()
	for id, ls := range saved {
		if !id.IsReserved() {
			if err := alloc.Restore(id, ls); err != nil {
				t.Fatal(err)
			}
		}
	}
	after := policy.NewRepository(policy.Options{Allocator: alloc})
	objs := st.Objects()
	for i, j := 0, len(objs)-1; i < j; i, j = i+1, j-1 {
		objs[i], objs[j] = objs[j], objs[i]
	}
	if _, err := after.Upsert(objs...); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(after.Snapshot().EndpointKeys(), keys) {
		t.Fatal("restarted repository has other endpoints")
	}
	if err := dp2.Sync(stateOf(after.Snapshot())); err != nil {
		t.Fatal(err)
	}
	if got := dp2.Revision(); got != rev {
		t.Errorf("revision moved from %d to %d: the restart revalidates every connection", rev, got)
	}
	again := readMaps(t, dp2, len(keys))
	if !reflect.DeepEqual(again.tables, loaded.tables) {
		t.Errorf("tables switched: %v -> %v", loaded.tables, again.tables)
	}
	if !reflect.DeepEqual(again.pol, loaded.pol) {
		t.Errorf("policy map rewritten (%d tables before, %d after)", len(loaded.pol), len(again.pol))
	}
	if !reflect.DeepEqual(again.sel, loaded.sel) {
		t.Errorf("selector lists changed")
	}
	if !reflect.DeepEqual(again.ip, loaded.ip) {
		t.Errorf("ipcache changed")
	}
}
