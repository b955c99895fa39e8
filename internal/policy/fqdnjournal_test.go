package policy

import (
	"fmt"
	"math/rand"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/bulwark-net/bulwark/internal/policy/api"
)

// TestFQDNSnapshotIPCacheIncremental: snapshots taken between learning
// and forgetting updates (ipcache built as an overlay, compacted now and
// then) have exactly the entries and lookups of an ipcache built from
// scratch, and selector member lists equal the members; FQDNChangesSince reports every changed address, and refuses
// once another kind of update happened.
func TestFQDNSnapshotIPCacheIncremental(t *testing.T) {
	r := NewRepository(Options{})
	if _, err := r.Upsert(fqdnPolicy("p", api.FQDNSelector{MatchPattern: "*.example.com"})); err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewSource(1))
	base := r.Revision()
	r.Snapshot()
	seen := map[netip.Addr]bool{}
	for i := 0; i < 700; i++ {
		name := fmt.Sprintf("n%d.example.com", rnd.Intn(300))
		var addrs []netip.Addr
		for j := rnd.Intn(3); j > 0; j-- {
			a := netip.AddrFrom4([4]byte{100, 64, byte(rnd.Intn(4)), byte(rnd.Intn(256))})
			addrs = append(addrs, a)
		}
		if _, err := r.SetFQDN(name, addrs); err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			seen[a] = true
		}
		if i%7 != 0 {
			continue
		}
		snap := r.Snapshot()
		r.mu.Lock()
		want := r.buildIPCache()
		// Frozen member lists (merged from deltas) equal the members.
		for _, sel := range snap.Selectors.IDs() {
			members := r.sels.byID[sel].members
			ids := snap.Selectors.Identities(sel)
			if len(ids) != len(members) || !slices.IsSorted(ids) {
				t.Fatalf("step %d: selector %d frozen %v, members %v", i, sel, ids, members)
			}
			for _, id := range ids {
				if _, ok := members[id]; !ok {
					t.Fatalf("step %d: selector %d frozen %v, members %v", i, sel, ids, members)
				}
			}
		}
		r.mu.Unlock()
		if got := snap.IPCache.Entries(); !reflect.DeepEqual(got, want.Entries()) {
			t.Fatalf("step %d: incremental ipcache differs from a rebuild:\n%v\n%v", i, got, want.Entries())
		}
		for a := range seen {
			if got, w := snap.IPCache.Lookup(a), want.Lookup(a); got != w {
				t.Fatalf("step %d: lookup %s = %d, rebuild says %d", i, a, got, w)
			}
		}
	}
	ch, ok := r.FQDNChangesSince(base)
	if !ok {
		t.Fatal("only FQDN updates happened, but FQDNChangesSince refused")
	}
	got := map[netip.Addr]bool{}
	for _, a := range ch.Addrs {
		got[a] = true
	}
	for a := range seen {
		if !got[a] {
			t.Fatalf("changed address %s not reported", a)
		}
	}
	if ch.Snapshot.Revision != r.Revision() {
		t.Fatalf("snapshot revision %d, repository %d", ch.Snapshot.Revision, r.Revision())
	}
	if _, err := r.Upsert(fqdnPolicy("q", api.FQDNSelector{MatchName: "x.example.com"})); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.FQDNChangesSince(ch.Snapshot.Revision); ok {
		t.Fatal("FQDNChangesSince accepted a revision before a policy change")
	}
	if _, ok := r.FQDNChangesSince(r.Revision()); !ok {
		t.Fatal("FQDNChangesSince refused the current revision")
	}
}
