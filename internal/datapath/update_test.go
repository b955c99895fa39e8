package datapath

import (
	"errors"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/bulwark-net/bulwark/internal/identity"
)

// TestSyncIncrementalMatchesFullSync: a sequence of UpdateIdentities
// (learned addresses added, moved between selectors, removed) leaves the
// kernel maps and the compiled selector lists exactly as one full Sync of
// the final state does on a fresh datapath, and a full Sync afterwards
// finds nothing to change.
func TestSyncIncrementalMatchesFullSync(t *testing.T) {
	inc, st := setupFixture(t)
	sels := fixtureSelectors{}
	for s, ids := range st.Selectors.(fixtureSelectors) {
		sels[s] = slices.Clone(ids)
	}
	ipc := maps.Clone(st.IPCache)
	learned := func(i int) (netip.Prefix, identity.NumericIdentity) {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), 32), identity.NumericIdentity(1<<24 | 0x5000 | i)
	}
	remove := func(l []identity.NumericIdentity, id identity.NumericIdentity) []identity.NumericIdentity {
		return slices.DeleteFunc(l, func(x identity.NumericIdentity) bool { return x == id })
	}
	rev := inc.Revision()
	for i := 1; i <= 40; i++ {
		u := IdentityUpdate{IPCache: map[netip.Prefix]identity.NumericIdentity{}}
		p, id := learned(i)
		ipc[p] = id
		u.IPCache[p] = id
		u.Identities = append(u.Identities, id)
		sels[selABC] = append(sels[selABC], id)
		if i%3 == 0 {
			sels[selAB] = append(sels[selAB], id)
		}
		if i%4 == 0 { // an earlier address moves out of selAB
			_, old := learned(i - 3)
			sels[selAB] = remove(sels[selAB], old)
			u.Identities = append(u.Identities, old)
		}
		if i%5 == 0 { // an earlier address expires
			op, old := learned(i - 4)
			delete(ipc, op)
			u.Delete = append(u.Delete, op)
			sels[selABC] = remove(sels[selABC], old)
			sels[selAB] = remove(sels[selAB], old)
			u.Identities = append(u.Identities, old)
		}
		snap := fixtureSelectors{}
		for s, ids := range sels {
			snap[s] = slices.Clone(ids)
		}
		u.Selectors = snap
		u.Revision = rev + uint64(i)
		if err := inc.UpdateIdentities(u); err != nil {
			t.Fatalf("update %d: %v", i, err)
		}
	}
	if inc.Revision() <= rev {
		t.Fatal("incremental updates did not move the revision")
	}

	final := fixtureState()
	final.Selectors = sels
	final.IPCache = ipc
	final.Revision = inc.Revision()
	full := openTest(t, Sizes{Policy: 4096, IPCache: 1024, IdentitySelectors: 1024, Conntrack: 4096})
	registerEndpoint(t, full, Endpoint{ID: testEP, IfIndex: 1, Identity: idPod})
	if err := full.Sync(final); err != nil {
		t.Fatal(err)
	}

	for name, read := range map[string]func(*Datapath) (any, error){
		"ipcache":      func(d *Datapath) (any, error) { return d.readIPCache() },
		"id_selectors": func(d *Datapath) (any, error) { return d.readSelectorLists() },
		"policy": func(d *Datapath) (any, error) {
			pol, err := d.scanPolicy()
			// Buffers may differ: compare by endpoint.
			out := map[uint32]map[bpfBwPolicyKey]bpfBwPolicyValue{}
			for _, tbl := range pol {
				for k, v := range tbl {
					k.TableId &^= 1
					if out[k.TableId] == nil {
						out[k.TableId] = map[bpfBwPolicyKey]bpfBwPolicyValue{}
					}
					out[k.TableId][k] = v
				}
			}
			return out, err
		},
	} {
		a, err := read(inc)
		if err != nil {
			t.Fatal(err)
		}
		b, err := read(full)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s differs:\nincremental %v\nfull        %v", name, a, b)
		}
	}
	if a, b := inc.Compiled().SelectorLists, full.Compiled().SelectorLists; !reflect.DeepEqual(a, b) {
		t.Errorf("compiled selector lists differ:\nincremental %v\nfull        %v", a, b)
	}
	// The incremental datapath's desired state is the final one: a full
	// Sync of it changes nothing.
	before := inc.Revision()
	if err := inc.Sync(final); err != nil {
		t.Fatal(err)
	}
	if inc.Revision() != before {
		t.Errorf("full Sync after incremental updates changed something (revision %d -> %d)", before, inc.Revision())
	}
}

// A selector that holds every reserved identity may be compiled as a
// wildcard: its membership changes go through a full Sync.
func TestSyncIncrementalRefusesWildcardCandidates(t *testing.T) {
	dp, st := setupFixture(t)
	sels := fixtureSelectors{}
	for s, ids := range st.Selectors.(fixtureSelectors) {
		sels[s] = slices.Clone(ids)
	}
	sels[selABC] = append(sels[selABC], identity.ReservedIdentities()...)
	st2 := fixtureState()
	st2.Selectors = sels
	if err := dp.Sync(st2); err != nil {
		t.Fatal(err)
	}
	rev := dp.Revision()
	p := netip.MustParsePrefix("100.64.9.9/32")
	err := dp.UpdateIdentities(IdentityUpdate{IPCache: map[netip.Prefix]identity.NumericIdentity{p: 1<<24 | 0x6000},
		Identities: []identity.NumericIdentity{1<<24 | 0x6000}, Selectors: sels, Revision: rev + 1})
	if !errors.Is(err, ErrFullSyncNeeded) {
		t.Fatalf("got %v, want ErrFullSyncNeeded", err)
	}
	if ip, _ := dp.readIPCache(); ip[ipcacheKey(p)] != 0 || dp.Revision() != rev {
		t.Fatal("a refused update wrote something")
	}
}
