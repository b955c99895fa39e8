package datapath

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// Changes says where a State may differ from the last one synced, so that
// SyncChanges reads and writes only that.
//
// Selector membership is not listed: SyncChanges compares, for each
// selector the endpoints use, the slice the selector set's Identities
// returns with the one it returned at the last sync, by identity (same
// array, same length: unchanged). A selector set must therefore return the
// same slice while a selector's membership stays, and a new one when it
// changes (policy.SelectorSnapshot does); a set returning a fresh copy
// each call is correct, only slower.
type Changes struct {
	// Endpoints whose policy may differ (added and removed ones included);
	// every other endpoint's policy is the one last synced. Its proxy
	// ports too: when ProxyPort's answers change, list every endpoint.
	Endpoints []uint32
	// IPCache: prefixes whose entry may differ (added, changed or
	// removed); AllIPCache: compare the whole ipcache instead.
	IPCache    []netip.Prefix
	AllIPCache bool
}

// SyncChanges makes the maps hold st, as Sync does, comparing only what ch
// says may have changed: the cost follows the change, not the state. When
// the datapath cannot trust its record of the maps (no successful sync
// yet, a previous agent's maps adopted, any failed write since), it runs
// a full Sync instead. The result is the same as Sync(st)'s.
func (dp *Datapath) SyncChanges(st State, ch Changes) error {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	return dp.syncChangesLocked(st, ch)
}

func (dp *Datapath) syncChangesLocked(st State, ch Changes) error {
	if dp.closed {
		return fmt.Errorf("sync: datapath closed")
	}
	c := dp.compiled
	if !dp.synced || dp.mirror == nil || dp.desired == nil || c == nil || c.epRefs == nil {
		return dp.syncLocked(st)
	}
	eps := slices.Clone(ch.Endpoints)
	slices.Sort(eps)
	eps = slices.Compact(eps)
	for _, id := range eps {
		if pol, ok := st.Endpoints[id]; ok {
			if err := validateEndpoint(id, pol); err != nil {
				return fmt.Errorf("sync: %w", err)
			}
		}
	}
	// Nothing is written, nor c changed, before this point: a refused
	// State leaves the datapath as it was.
	refCount := maps.Clone(c.refCount)
	newRefs := make(map[uint32][]resolved.SelectorID, len(eps))
	for _, id := range eps {
		for _, s := range c.epRefs[id] {
			if refCount[s]--; refCount[s] == 0 {
				delete(refCount, s)
			}
		}
		if pol, ok := st.Endpoints[id]; ok {
			refs := endpointRefs(pol)
			newRefs[id] = refs
			for _, s := range refs {
				refCount[s]++
			}
		}
	}
	if len(refCount) > 0 && st.Selectors == nil {
		return fmt.Errorf("sync: compile: state has policy entries but no selector set")
	}

	// Selector lists of the identities whose membership changed, copied
	// on write (the mirror shares the old lists).
	lists := map[identity.NumericIdentity][]resolved.SelectorID{}
	listOf := func(id identity.NumericIdentity) []resolved.SelectorID {
		if l, ok := lists[id]; ok {
			return l
		}
		return c.SelectorLists[id]
	}
	add := func(id identity.NumericIdentity, s resolved.SelectorID) {
		l := listOf(id)
		i, found := slices.BinarySearch(l, s)
		if !found {
			lists[id] = slices.Insert(slices.Clip(l), i, s)
		} else if _, ok := lists[id]; !ok {
			lists[id] = l
		}
	}
	remove := func(id identity.NumericIdentity, s resolved.SelectorID) {
		l := listOf(id)
		if i, found := slices.BinarySearch(l, s); found {
			lists[id] = slices.Delete(slices.Clone(l), i, i+1)
		} else if _, ok := lists[id]; !ok {
			lists[id] = l
		}
	}
	members := make(map[resolved.SelectorID][]identity.NumericIdentity, len(refCount))
	for s := range refCount {
		cur := st.Selectors.Identities(s)
		members[s] = cur
		old, was := c.members[s]
		if was && sameSlice(old, cur) {
			continue
		}
		diffSorted(old, cur, func(id identity.NumericIdentity) { add(id, s) }, func(id identity.NumericIdentity) { remove(id, s) })
	}
	for s, old := range c.members {
		if _, still := refCount[s]; !still {
			for _, id := range old {
				remove(id, s)
			}
		}
	}

	if len(c.relisted) > 0 {
		selects := selectsFunc(st.Selectors)
		refs := slices.Sorted(maps.Keys(refCount))
		for id := range c.relisted {
			var l []resolved.SelectorID
			for _, s := range refs {
				if selects(s, id) {
					l = append(l, s)
				}
			}
			lists[id] = l
		}
	}

	// Wildcards follow membership; an endpoint using a selector whose
	// wildcard status flipped compiles again.
	nLists := len(c.SelectorLists)
	for id, l := range lists {
		_, had := c.SelectorLists[id]
		switch {
		case len(l) > 0 && !had:
			nLists++
		case len(l) == 0 && had:
			nLists--
		}
	}
	wild := wildcardsOf(st.Selectors, members, nLists)
	var flipped []resolved.SelectorID
	for s := range refCount {
		if _, was := c.members[s]; was && wild[s] != c.wildcard[s] {
			flipped = append(flipped, s)
		}
	}
	if len(flipped) > 0 {
		for id, refs := range c.epRefs {
			if _, listed := newRefs[id]; listed {
				continue
			}
			for _, s := range flipped {
				if _, found := slices.BinarySearch(refs, s); found {
					eps = append(eps, id)
					newRefs[id] = refs
					break
				}
			}
		}
		slices.Sort(eps)
		eps = slices.Compact(eps)
	}

	// The plan, then c becomes the new state (a failed write below
	// forgets it: the next sync is a full one).
	plan := syncPlan{ipPut: map[bpfBwIpcacheKey]uint32{}}
	if ch.AllIPCache {
		for p, id := range st.IPCache {
			plan.ipPut[ipcacheKey(p)] = uint32(id)
		}
		for k := range dp.mirror.ip {
			if _, ok := plan.ipPut[k]; !ok {
				plan.ipDel = append(plan.ipDel, k)
			}
		}
	} else {
		for _, p := range ch.IPCache {
			if id, ok := st.IPCache[p]; ok {
				plan.ipPut[ipcacheKey(p)] = uint32(id)
			}
		}
		// A prefix removed, or given twice (as another spelling of a
		// kept one), is deleted only when st has no entry for its key.
		for _, p := range ch.IPCache {
			if k := ipcacheKey(p); !hasKey(plan.ipPut, k) {
				if _, ok := st.IPCache[p]; !ok {
					plan.ipDel = append(plan.ipDel, k)
				}
			}
		}
	}
	for _, id := range eps {
		if pol, ok := st.Endpoints[id]; ok {
			c.Endpoints[id] = compileEndpoint(id, pol, wild, st.ProxyPort, c.interner, c.Endpoints[id])
			c.epRefs[id] = newRefs[id]
		} else {
			delete(c.Endpoints, id)
			delete(c.epRefs, id)
		}
		if dp.endpoints[id] != nil {
			plan.eps = append(plan.eps, id)
		}
	}
	for id, l := range lists {
		plan.ids = append(plan.ids, id)
		_, was := c.Overflowed[id]
		if len(l) > MaxSelectorsPerIdentity {
			c.Overflowed[id] = len(l)
			if !was {
				plan.newlyOverflowed = append(plan.newlyOverflowed, id)
			}
		} else {
			delete(c.Overflowed, id)
		}
		if len(l) == 0 {
			delete(c.SelectorLists, id)
		} else {
			c.SelectorLists[id] = l
		}
	}
	if !sameKeys(refCount, c.refCount) {
		c.referenced = slices.Sorted(maps.Keys(refCount))
	}
	c.refCount, c.members, c.wildcard = refCount, members, wild
	c.relisted = map[identity.NumericIdentity]struct{}{}
	c.interner.prune(c.Endpoints)
	c.Rules = c.interner.rules
	if err := dp.apply(st, c, dp.mirror, plan); err != nil {
		return err
	}
	return nil
}

func hasKey(m map[bpfBwIpcacheKey]uint32, k bpfBwIpcacheKey) bool {
	_, ok := m[k]
	return ok
}

func sameKeys(a, b map[resolved.SelectorID]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return true
}

// sameSlice reports whether a and b are the same slice (array and length):
// a selector set's unchanged membership.
func sameSlice(a, b []identity.NumericIdentity) bool {
	if len(a) != len(b) {
		return false
	}
	return len(a) == 0 || &a[0] == &b[0]
}

// diffSorted calls added for each identity of cur not in old and removed
// for each of old not in cur (both sorted; duplicates count once).
func diffSorted(old, cur []identity.NumericIdentity, added, removed func(identity.NumericIdentity)) {
	i, j := 0, 0
	for i < len(old) || j < len(cur) {
		switch {
		case j == len(cur) || (i < len(old) && old[i] < cur[j]):
			if i == 0 || old[i-1] != old[i] {
				removed(old[i])
			}
			i++
		case i == len(old) || cur[j] < old[i]:
			if j == 0 || cur[j-1] != cur[j] {
				added(cur[j])
			}
			j++
		default:
			i++
			j++
		}
	}
}

// wildcardsOf is wildcardSelectors given the size of the universe (the
// identities in some referenced selector, the reserved ones included
// whenever a candidate exists), so that no universe is built.
func wildcardsOf(sels resolved.SelectorSet, members map[resolved.SelectorID][]identity.NumericIdentity, universe int) map[resolved.SelectorID]bool {
	out := map[resolved.SelectorID]bool{}
	if w, ok := sels.(WildcardSelectorSet); ok {
		for s := range members {
			if w.IsWildcard(s) {
				out[s] = true
			}
		}
		return out
	}
	reserved := identity.ReservedIdentities()
	for s, ids := range members {
		if len(ids) < universe {
			continue
		}
		all := true
		for _, r := range reserved {
			if _, found := slices.BinarySearch(ids, r); !found {
				all = false
				break
			}
		}
		if !all {
			continue
		}
		n := 0
		for i, id := range ids {
			if i == 0 || ids[i-1] != id {
				n++
			}
		}
		if n == universe {
			out[s] = true
		}
	}
	return out
}
