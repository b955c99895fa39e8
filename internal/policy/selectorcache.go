package policy

import (
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"sort"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/policy/selector"
)

// peerSpec is one peer of a rule: a label selector over identities, an
// FQDN selector over the names the DNS proxy learned, or a label selector
// restricted to the pods with a named port value (see namedport.go).
type peerSpec struct {
	label selector.Selector
	fqdn  *fqdnMatcher  // set for toFQDNs peers
	named *namedPortSel // set for derived egress named-port peers
	key   string        // canonical: equal keys select the same identities
}

func labelPeer(s selector.Selector) peerSpec {
	return peerSpec{label: s, key: "L:" + s.String()}
}

func fqdnPeer(m *fqdnMatcher) peerSpec {
	return peerSpec{fqdn: m, key: "F:" + m.String()}
}

// String is the human form of the peer (for trace output).
func (p peerSpec) String() string {
	if p.fqdn != nil {
		return "fqdn(" + p.fqdn.String() + ")"
	}
	if p.named != nil {
		l := "all"
		if !p.label.IsAll() {
			l = p.label.String()
		}
		return "{" + l + "} with named port " + p.named.String()
	}
	if p.label.IsAll() {
		return "{all}"
	}
	return "{" + p.label.String() + "}"
}

// selEntry is a cached selector. Invariant: members is exactly the set of
// allocated identities the selector matches (for FQDN selectors: the
// identities of the IPs learned for a matching name).
type selEntry struct {
	id      resolved.SelectorID
	hash    uint64 // keyHash(peer.key)
	peer    peerSpec
	refs    int
	members map[identity.NumericIdentity]struct{}
	dirty   bool // members changed since the last snapshot
	frozen  *memberSet
	desc    string
	// delta: identities added (true) or removed (false) since frozen
	// was made, when every change went through note; rebuild: some did
	// not (freeze then sorts members again).
	delta   map[identity.NumericIdentity]bool
	rebuild bool
}

// note records one membership change (members already updated).
func (e *selEntry) note(id identity.NumericIdentity, in bool) {
	if e.delta == nil {
		e.delta = map[identity.NumericIdentity]bool{}
	}
	e.delta[id] = in
	e.dirty = true
}

// selectorCache interns selectors: one SelectorID per distinct peer, kept
// while some compiled rule references it.
//
// IDs are derived from the peer's canonical key, not from history, so that
// two repositories holding the same selectors (a restarted agent, the
// offline checker) number them the same and a restarted agent's first
// datapath Sync rewrites nothing:
//   - a peer's ID is its preferred ID (restored from a previous run, see
//     Options.SelectorIDs) when that is free, else the first free ID of the
//     probe sequence base, base+1, ... (0 skipped), base being the 32-bit
//     fold of the FNV-1a hash of the key;
//   - "free" means held by no live selector and never held by a different
//     key in this cache's life: an ID never names two different selectors,
//     so a datapath holding an old ID can't confuse it with a new selector
//     (the same key may take its old ID back).
//
// Only a hash collision (two live keys with the same base; about n²/2³³
// for n selectors) makes an ID depend on the order the keys arrived in;
// persisting SelectorIDs and restoring them covers that case.
type selectorCache struct {
	byKey map[string]*selEntry
	byID  map[resolved.SelectorID]*selEntry
	// retired: IDs released in this cache's life → hash of the key that
	// held them (one entry per ID: bounded by the distinct IDs ever used).
	retired   map[resolved.SelectorID]uint64
	preferred map[string]resolved.SelectorID   // restored: key → ID of a previous run
	changed   map[resolved.SelectorID]struct{} // since the last Changes()
	// published membership, kept up to date at each snapshot for the
	// selectors in unpublished (added, released or with changed members)
	sets        map[resolved.SelectorID]*memberSet
	descs       map[resolved.SelectorID]string
	unpublished map[resolved.SelectorID]struct{}
}

func newSelectorCache(preferred map[string]resolved.SelectorID) *selectorCache {
	return &selectorCache{
		byKey:       map[string]*selEntry{},
		byID:        map[resolved.SelectorID]*selEntry{},
		retired:     map[resolved.SelectorID]uint64{},
		preferred:   maps.Clone(preferred),
		changed:     map[resolved.SelectorID]struct{}{},
		sets:        map[resolved.SelectorID]*memberSet{},
		descs:       map[resolved.SelectorID]string{},
		unpublished: map[resolved.SelectorID]struct{}{},
	}
}

// acquire returns the ID of a peer, computing its membership over the
// identities ids on first use.
func (c *selectorCache) acquire(p peerSpec, ids map[identity.NumericIdentity]identity.Labels, fq *fqdnState) resolved.SelectorID {
	if e, ok := c.byKey[p.key]; ok {
		e.refs++
		return e.id
	}
	h := keyHash(p.key)
	e := &selEntry{id: c.pick(p.key, h), hash: h, peer: p, refs: 1, members: map[identity.NumericIdentity]struct{}{}, dirty: true, desc: p.String()}
	delete(c.retired, e.id)
	if p.fqdn != nil {
		for id := range fq.identitiesMatching(p.fqdn) {
			e.members[id] = struct{}{}
		}
	} else {
		for id, ls := range ids {
			if p.label.Matches(ls) {
				e.members[id] = struct{}{}
			}
		}
	}
	c.byKey[p.key] = e
	c.byID[e.id] = e
	c.touch(e.id)
	return e.id
}

// keyHash is the FNV-1a hash of a canonical peer key.
func keyHash(key string) uint64 {
	f := fnv.New64a()
	f.Write([]byte(key))
	return f.Sum64()
}

// pick chooses the ID of a new selector (see selectorCache).
func (c *selectorCache) pick(key string, h uint64) resolved.SelectorID {
	if id, ok := c.preferred[key]; ok && id != 0 && c.free(id, h) {
		return id
	}
	id := resolved.SelectorID(uint32(h) ^ uint32(h>>32))
	for id == 0 || !c.free(id, h) {
		id++ // wraps; terminates: fewer than 2³² IDs are ever taken
	}
	return id
}

func (c *selectorCache) free(id resolved.SelectorID, h uint64) bool {
	if _, live := c.byID[id]; live {
		return false
	}
	owner, used := c.retired[id]
	return !used || owner == h
}

// ids returns the canonical key → ID of every live selector (what
// Options.SelectorIDs restores).
func (c *selectorCache) ids() map[string]resolved.SelectorID {
	out := make(map[string]resolved.SelectorID, len(c.byKey))
	for k, e := range c.byKey {
		out[k] = e.id
	}
	return out
}

func (c *selectorCache) touch(id resolved.SelectorID) {
	c.changed[id] = struct{}{}
	c.unpublished[id] = struct{}{}
}

func (c *selectorCache) release(id resolved.SelectorID) {
	e, ok := c.byID[id]
	if !ok {
		return
	}
	e.refs--
	if e.refs > 0 {
		return
	}
	delete(c.byKey, e.peer.key)
	delete(c.byID, id)
	c.retired[id] = e.hash
	c.touch(id)
}

// addIdentity adds a newly allocated identity to every label selector
// matching it.
func (c *selectorCache) addIdentity(id identity.NumericIdentity, ls identity.Labels) {
	for _, e := range c.byID {
		if e.peer.fqdn == nil && e.peer.named == nil && e.peer.label.Matches(ls) {
			e.members[id] = struct{}{}
			e.note(id, true)
			c.touch(e.id)
		}
	}
}

// removeIdentity takes an identity out of every selector.
func (c *selectorCache) removeIdentity(id identity.NumericIdentity) {
	for _, e := range c.byID {
		if _, ok := e.members[id]; ok {
			delete(e.members, id)
			e.note(id, false)
			c.touch(e.id)
		}
	}
}

// acquireWith is acquire for a selector whose members are computed from
// state other than labels (derived named-port peers).
func (c *selectorCache) acquireWith(p peerSpec, members func(peerSpec) map[identity.NumericIdentity]struct{}) resolved.SelectorID {
	if e, ok := c.byKey[p.key]; ok {
		e.refs++
		return e.id
	}
	h := keyHash(p.key)
	e := &selEntry{id: c.pick(p.key, h), hash: h, peer: p, refs: 1, members: members(p), dirty: true, desc: p.String()}
	delete(c.retired, e.id)
	c.byKey[p.key] = e
	c.byID[e.id] = e
	c.touch(e.id)
	return e.id
}

// updateComputed sets, for each entry for which member reports ok, the
// membership of the identities ids as member says.
func (c *selectorCache) updateComputed(ids map[identity.NumericIdentity]struct{}, member func(peerSpec, identity.NumericIdentity) (in, ok bool)) {
	for _, e := range c.byID {
		changed := false
		for id := range ids {
			in, ok := member(e.peer, id)
			if !ok {
				break
			}
			if _, was := e.members[id]; was == in {
				continue
			}
			if in {
				e.members[id] = struct{}{}
			} else {
				delete(e.members, id)
			}
			changed = true
		}
		if changed {
			e.dirty, e.rebuild = true, true
			c.touch(e.id)
		}
	}
}

// memberSet is an immutable, sorted set of identities.
type memberSet struct {
	ids []identity.NumericIdentity
}

func (m *memberSet) has(id identity.NumericIdentity) bool {
	ids := m.ids
	i := sort.Search(len(ids), func(i int) bool { return ids[i] >= id })
	return i < len(ids) && ids[i] == id
}

// apply returns the set with delta's changes (true: add, false: remove).
func (m *memberSet) apply(delta map[identity.NumericIdentity]bool) *memberSet {
	var adds, dels []identity.NumericIdentity
	for id, in := range delta {
		switch has := m.has(id); {
		case in && !has:
			adds = append(adds, id)
		case !in && has:
			dels = append(dels, id)
		}
	}
	slices.Sort(adds)
	slices.Sort(dels)
	out := make([]identity.NumericIdentity, 0, len(m.ids)+len(adds)-len(dels))
	i, j := 0, 0
	for _, id := range m.ids {
		for i < len(adds) && adds[i] < id {
			out = append(out, adds[i])
			i++
		}
		if j < len(dels) && dels[j] == id {
			j++
			continue
		}
		out = append(out, id)
	}
	out = append(out, adds[i:]...)
	return &memberSet{ids: out}
}

func (e *selEntry) freeze() *memberSet {
	if e.frozen != nil && !e.dirty {
		return e.frozen
	}
	// A few changes: merged into a copy of the sorted list (a copy, not
	// a sort of every member); the length check backs the bookkeeping.
	if e.frozen != nil && !e.rebuild && len(e.delta) > 0 && len(e.delta) <= len(e.frozen.ids)/4+16 {
		if m := e.frozen.apply(e.delta); len(m.ids) == len(e.members) {
			e.frozen, e.dirty = m, false
			clear(e.delta)
			return m
		}
	}
	clear(e.delta)
	e.rebuild = false
	ids := make([]identity.NumericIdentity, 0, len(e.members))
	for id := range e.members {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	e.frozen = &memberSet{ids: ids}
	e.dirty = false
	return e.frozen
}

// SelectorSnapshot is an immutable view of selector membership; it
// implements resolved.SelectorSet.
type SelectorSnapshot struct {
	sets  map[resolved.SelectorID]*memberSet
	descs map[resolved.SelectorID]string
}

var _ resolved.SelectorSet = (*SelectorSnapshot)(nil)

func (c *selectorCache) snapshot() *SelectorSnapshot {
	for id := range c.unpublished {
		if e, ok := c.byID[id]; ok {
			c.sets[id] = e.freeze()
			c.descs[id] = e.desc
		} else {
			delete(c.sets, id)
			delete(c.descs, id)
		}
	}
	clear(c.unpublished)
	return &SelectorSnapshot{sets: maps.Clone(c.sets), descs: maps.Clone(c.descs)}
}

// Selects implements resolved.Selectors.
func (s *SelectorSnapshot) Selects(sel resolved.SelectorID, id identity.NumericIdentity) bool {
	m, ok := s.sets[sel]
	return ok && m.has(id)
}

// Identities implements resolved.SelectorSet: the sorted members of sel
// (nil for an unknown selector). The slice must not be modified.
func (s *SelectorSnapshot) Identities(sel resolved.SelectorID) []identity.NumericIdentity {
	if m, ok := s.sets[sel]; ok {
		return m.ids
	}
	return nil
}

// IDs returns every selector ID in the snapshot, sorted.
func (s *SelectorSnapshot) IDs() []resolved.SelectorID {
	out := make([]resolved.SelectorID, 0, len(s.sets))
	for id := range s.sets {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Describe returns the human form of a selector ("{k8s:app=web,...}",
// "{all}", "fqdn(...)").
func (s *SelectorSnapshot) Describe(sel resolved.SelectorID) string {
	if d, ok := s.descs[sel]; ok {
		return d
	}
	return fmt.Sprintf("selector-%d(unknown)", sel)
}
