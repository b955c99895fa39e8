package datapath

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// stableSelectors is a selector set that returns the same slice while a
// selector's membership stays (as policy.SelectorSnapshot does): members
// sorted and distinct; a change replaces the slice.
type stableSelectors map[resolved.SelectorID][]identity.NumericIdentity

func (s stableSelectors) Selects(sel resolved.SelectorID, id identity.NumericIdentity) bool {
	_, found := slices.BinarySearch(s[sel], id)
	return found
}

func (s stableSelectors) Identities(sel resolved.SelectorID) []identity.NumericIdentity {
	return s[sel]
}

// syncContent is what a datapath's maps hold, normalized where two correct
// datapaths may differ: which of an endpoint's two buffers is active, and
// the identity of an endpoint record that is not ready.
type syncContent struct {
	IPCache   map[bpfBwIpcacheKey]uint32
	Selectors map[identity.NumericIdentity][]resolved.SelectorID
	Policy    map[uint32]map[bpfBwPolicyKey]bpfBwPolicyValue // by endpoint
	Buffers   map[uint32]int                                 // tables of endpoints not ready (none)
	Records   map[uint32]bpfBwEndpoint                       // by ifindex
}

func readContent(t *testing.T, dp *Datapath) syncContent {
	t.Helper()
	var c syncContent
	var err error
	if c.IPCache, err = dp.readIPCache(); err != nil {
		t.Fatal(err)
	}
	if c.Selectors, err = dp.readSelectorLists(); err != nil {
		t.Fatal(err)
	}
	pol, err := dp.scanPolicy()
	if err != nil {
		t.Fatal(err)
	}
	c.Policy, c.Buffers = map[uint32]map[bpfBwPolicyKey]bpfBwPolicyValue{}, map[uint32]int{}
	active, ready := map[uint32]bool{}, map[uint32]bool{}
	var k uint32
	var v bpfBwEndpoint
	for it := dp.objs.BwEndpoints.Iterate(); it.Next(&k, &v); {
		if v.Flags&epFlagReady != 0 {
			active[v.TableId[0]] = true
			ready[v.EndpointId] = true
		}
	}
	for tid, tbl := range pol {
		if !ready[tid>>1] {
			c.Buffers[tid>>1]++ // a leftover
		}
		if !active[tid] {
			continue // a ready endpoint's previous tables, or a leftover
		}
		for k, v := range tbl {
			k.TableId &^= 1
			if c.Policy[tid>>1] == nil {
				c.Policy[tid>>1] = map[bpfBwPolicyKey]bpfBwPolicyValue{}
			}
			c.Policy[tid>>1][k] = v
		}
	}
	c.Records = map[uint32]bpfBwEndpoint{}
	it := dp.objs.BwEndpoints.Iterate()
	for it.Next(&k, &v) {
		v.TableId = [2]uint32{v.TableId[0] &^ 1, v.TableId[1] &^ 1}
		if v.Flags&epFlagReady == 0 {
			v.Identity = 0
		}
		c.Records[k] = v
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return c
}

// syncModel is a random desired state and the changes made to it.
type syncModel struct {
	rng  *rand.Rand
	ids  []identity.NumericIdentity // pod identities that may exist
	sels stableSelectors
	ipc  map[netip.Prefix]identity.NumericIdentity
	eps  map[uint32]*resolved.EndpointPolicy
	rev  uint64
}

const (
	modelSelectors = 14 // selector 14 is never given members: unknown
	modelEndpoints = 7  // endpoint 7 is never attached
	modelWildcard  = 13 // sometimes holds every identity
)

func (m *syncModel) randomPolicy(epID uint32) *resolved.EndpointPolicy {
	r := m.rng
	pol := &resolved.EndpointPolicy{Identity: m.ids[r.IntN(len(m.ids))]}
	protos := []resolved.Protocol{resolved.ProtoTCP, resolved.ProtoUDP, resolved.ProtoAny, resolved.ProtoICMP, resolved.ProtoSCTP}
	verdicts := []resolved.Verdict{resolved.Allow, resolved.Allow, resolved.Deny, resolved.Redirect, resolved.AuditDeny}
	for _, dir := range []resolved.Direction{resolved.Ingress, resolved.Egress} {
		d := pol.Dir(dir)
		d.Enforced = r.IntN(3) > 0
		d.Audit = !d.Enforced && r.IntN(2) == 0
		for range r.IntN(8) {
			e := resolved.Entry{Peer: resolved.SelectorID(1 + r.IntN(modelSelectors)), Proto: protos[r.IntN(len(protos))],
				Verdict: verdicts[r.IntN(len(verdicts))], Origin: []resolved.PolicyRef{{Kind: "CiliumNetworkPolicy", Namespace: "ns", Name: fmt.Sprint("p", r.IntN(6))}}}
			switch r.IntN(4) {
			case 0: // every port
			case 1:
				e.PortLo = uint16(1 + r.IntN(100))
				e.PortHi = e.PortLo
			case 2:
				e.PortLo = uint16(1 + r.IntN(100))
				e.PortHi = e.PortLo + uint16(r.IntN(300))
			case 3: // an empty range
				e.PortLo, e.PortHi = 50, 40
			}
			if e.Verdict == resolved.Redirect {
				e.L7 = &resolved.L7Rules{HTTP: []resolved.HTTPRule{{Path: "/"}}}
			}
			d.Entries = append(d.Entries, e)
		}
	}
	return pol
}

func (m *syncModel) setMembers(sel resolved.SelectorID, ids []identity.NumericIdentity) {
	ids = slices.Clone(ids)
	slices.Sort(ids)
	m.sels[sel] = slices.Compact(ids)
}

// step makes one to three random changes and says what they touched.
func (m *syncModel) step() (Changes, string) {
	r := m.rng
	var ch Changes
	var what []string
	for range 1 + r.IntN(3) {
		switch r.IntN(6) {
		case 0, 1: // an endpoint's policy changes, appears or goes
			id := uint32(1 + r.IntN(modelEndpoints))
			if _, ok := m.eps[id]; ok && r.IntN(4) == 0 {
				delete(m.eps, id)
				what = append(what, fmt.Sprint("remove endpoint ", id))
			} else {
				m.eps[id] = m.randomPolicy(id)
				what = append(what, fmt.Sprint("policy of endpoint ", id))
			}
			ch.Endpoints = append(ch.Endpoints, id)
		case 2: // a selector's membership changes
			sel := resolved.SelectorID(1 + r.IntN(modelSelectors-1))
			var ids []identity.NumericIdentity
			if sel == modelWildcard && r.IntN(2) == 0 {
				ids = append(append(ids, m.ids...), identity.ReservedIdentities()...)
			} else {
				for _, id := range m.ids {
					if r.IntN(3) == 0 {
						ids = append(ids, id)
					}
				}
			}
			m.setMembers(sel, ids)
			what = append(what, fmt.Sprintf("members of selector %d (%d)", sel, len(ids)))
		case 3: // a pod's identity moves: its address and memberships
			i := r.IntN(len(m.ids))
			old := m.ids[i]
			nid := identity.NumericIdentity(1000 + r.IntN(100000))
			if slices.Contains(m.ids, nid) {
				continue
			}
			m.ids[i] = nid
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 32)
			m.ipc[p] = nid
			ch.IPCache = append(ch.IPCache, p)
			for sel, l := range m.sels {
				if j, found := slices.BinarySearch(l, old); found {
					l = slices.Delete(slices.Clone(l), j, j+1)
					if r.IntN(2) == 0 || sel == modelWildcard {
						l = append(l, nid)
					}
					m.setMembers(sel, l)
				}
			}
			what = append(what, fmt.Sprintf("identity %d -> %d", old, nid))
		case 4: // an ipcache prefix appears, changes or goes
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(r.IntN(4)), 0}), 24)
			if _, ok := m.ipc[p]; ok && r.IntN(2) == 0 {
				delete(m.ipc, p)
			} else {
				m.ipc[p] = m.ids[r.IntN(len(m.ids))]
			}
			ch.IPCache = append(ch.IPCache, p)
			what = append(what, fmt.Sprint("prefix ", p))
		case 5: // many ipcache entries at once: compared in full
			for i := range m.ids {
				if r.IntN(4) == 0 {
					delete(m.ipc, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 32))
				} else {
					m.ipc[netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 32)] = m.ids[i]
				}
			}
			ch.AllIPCache = true
			what = append(what, "whole ipcache")
		}
	}
	m.rev++
	return ch, fmt.Sprint(what)
}

func (m *syncModel) state() State {
	return State{
		Endpoints: maps.Clone(m.eps),
		Selectors: maps.Clone(m.sels),
		IPCache:   maps.Clone(m.ipc), // the datapath owns it (UpdateIdentities)
		Revision:  m.rev,
		ProxyPort: func(uint32, resolved.Direction, *resolved.Entry) uint16 { return 15001 },
	}
}

func newSyncModel(seed uint64) *syncModel {
	m := &syncModel{rng: rand.New(rand.NewPCG(seed, 7)), sels: stableSelectors{},
		ipc: map[netip.Prefix]identity.NumericIdentity{netip.MustParsePrefix("0.0.0.0/0"): identity.WorldIPv4},
		eps: map[uint32]*resolved.EndpointPolicy{}, rev: 1}
	for i := range 40 {
		id := identity.NumericIdentity(256 + i)
		m.ids = append(m.ids, id)
		m.ipc[netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 32)] = id
	}
	for s := resolved.SelectorID(1); s < modelSelectors; s++ {
		var ids []identity.NumericIdentity
		for _, id := range m.ids {
			if m.rng.IntN(3) == 0 {
				ids = append(ids, id)
			}
		}
		m.setMembers(s, ids)
	}
	m.setMembers(modelWildcard, append(slices.Clone(m.ids), identity.ReservedIdentities()...))
	for id := uint32(1); id <= modelEndpoints; id++ {
		m.eps[id] = m.randomPolicy(id)
	}
	return m
}

func openModelDatapath(t *testing.T) *Datapath {
	dp := openTest(t, Sizes{Policy: 1 << 16, IPCache: 1024, IdentitySelectors: 1024, Conntrack: 1024})
	for id := uint32(1); id < modelEndpoints; id++ {
		registerEndpoint(t, dp, Endpoint{ID: id, IfIndex: 100 + int(id), Identity: 200})
	}
	return dp
}

// TestSyncChangesMatchesFullSync applies random sequences of changes
// (policies, selector membership, wildcard selectors, identities moving,
// ipcache prefixes, learned addresses through UpdateIdentities) with
// SyncChanges, and after each compares the kernel maps with a full Sync
// of the same State on a fresh datapath.
func TestSyncChangesMatchesFullSync(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			m := newSyncModel(seed)
			inc := openModelDatapath(t)
			if err := inc.SyncChanges(m.state(), Changes{}); err != nil { // no sync yet: a full one
				t.Fatal(err)
			}
			for i := range 20 {
				ch, what := m.step()
				if i%6 == 5 {
					// A learned address, as the FQDN path adds it.
					p := netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, 0, byte(i)}), 32)
					nid := identity.NumericIdentity(1<<24 | i)
					m.ipc[p] = nid
					m.setMembers(3, append(slices.Clone(m.sels[3]), nid))
					st := m.state()
					err := inc.UpdateIdentities(IdentityUpdate{IPCache: map[netip.Prefix]identity.NumericIdentity{p: nid},
						Identities: []identity.NumericIdentity{nid}, Selectors: st.Selectors, Revision: m.rev})
					switch {
					case errors.Is(err, ErrFullSyncNeeded):
						ch.IPCache = append(ch.IPCache, p)
					case err != nil:
						t.Fatalf("step %d: update identities: %v", i, err)
					}
					what += " + learned " + p.String()
				}
				st := m.state()
				if err := inc.SyncChanges(st, ch); err != nil {
					t.Fatalf("step %d (%s): %v", i, what, err)
				}
				full := openModelDatapath(t)
				if err := full.Sync(m.state()); err != nil {
					t.Fatalf("step %d: full sync: %v", i, err)
				}
				a, b := readContent(t, inc), readContent(t, full)
				for _, part := range []struct {
					name string
					a, b any
				}{{"ipcache", a.IPCache, b.IPCache}, {"selector lists", a.Selectors, b.Selectors},
					{"policy", a.Policy, b.Policy}, {"buffers", a.Buffers, b.Buffers}, {"endpoint records", a.Records, b.Records}} {
					if !reflect.DeepEqual(part.a, part.b) {
						t.Fatalf("step %d (%s): %s differ:\nincremental %v\nfull        %v", i, what, part.name, part.a, part.b)
					}
				}
				if a, b := inc.Compiled().SelectorLists, full.Compiled().SelectorLists; !reflect.DeepEqual(a, b) {
					t.Fatalf("step %d (%s): compiled selector lists differ", i, what)
				}
				if err := full.Destroy(); err != nil {
					t.Fatal(err)
				}
			}
			// Nothing is left for a full Sync to change.
			before := inc.Revision()
			if err := inc.Sync(m.state()); err != nil {
				t.Fatal(err)
			}
			if inc.Revision() != before {
				t.Errorf("a full Sync after the incremental ones changed something (revision %d -> %d)", before, inc.Revision())
			}
		})
	}
}

// A refused State (an invalid verdict) changes nothing, and the next
// incremental sync still applies.
func TestSyncChangesRefusesInvalidState(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	m := newSyncModel(9)
	dp := openModelDatapath(t)
	if err := dp.Sync(m.state()); err != nil {
		t.Fatal(err)
	}
	before, rev := readContent(t, dp), dp.Revision()
	bad := m.state()
	bad.Endpoints[1] = &resolved.EndpointPolicy{Ingress: resolved.DirectionPolicy{Entries: []resolved.Entry{{Peer: 1, Verdict: 9}}}}
	if err := dp.SyncChanges(bad, Changes{Endpoints: []uint32{1}}); err == nil {
		t.Fatal("an invalid verdict was accepted")
	}
	if after := readContent(t, dp); !reflect.DeepEqual(before, after) || dp.Revision() != rev {
		t.Fatal("a refused state wrote something")
	}
	ch, _ := m.step()
	if err := dp.SyncChanges(m.state(), ch); err != nil {
		t.Fatal(err)
	}
	full := openModelDatapath(t)
	if err := full.Sync(m.state()); err != nil {
		t.Fatal(err)
	}
	if a, b := readContent(t, dp), readContent(t, full); !reflect.DeepEqual(a, b) {
		t.Fatalf("after a refused state, incremental and full differ:\n%v\n%v", a, b)
	}
}
