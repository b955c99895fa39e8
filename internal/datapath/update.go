package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// ErrFullSyncNeeded is returned by UpdateIdentities when the change cannot
// be applied incrementally (no previous Sync, a wildcard selector whose
// compilation could change, ...): the caller runs a full Sync instead.
// Nothing was written.
var ErrFullSyncNeeded = errors.New("datapath: incremental update not possible, full sync needed")

// IdentityUpdate is a change of addresses and identity memberships that
// leaves every endpoint's policy as the last Sync gave it: what learning
// or expiring DNS names does.
type IdentityUpdate struct {
	// IPCache: prefixes whose entry becomes the given identity; Delete:
	// prefixes that leave the ipcache.
	IPCache map[netip.Prefix]identity.NumericIdentity
	Delete  []netip.Prefix
	// Identities whose selector membership may have changed (identities
	// of IPCache's entries included).
	Identities []identity.NumericIdentity
	// Selectors is the new selector set (the one Identities' membership
	// is read from); it replaces the last Sync's.
	Selectors resolved.SelectorSet
	Revision  uint64
}

// UpdateIdentities applies u in O(len(u)): the result equals a full Sync
// of the last synced State with u applied (same endpoint policies, the new
// selector set and ipcache). Order, failing closed: an identity's selector
// list holds its new memberships before any ipcache entry maps an address
// to it (new identities' lists are final at once, existing ones take the
// union first); then ipcache additions, then exact lists, then removals;
// then the revision moves, so established flows revalidate.
//
// ErrFullSyncNeeded: nothing written, run Sync. The datapath takes
// ownership of the last Sync's st.IPCache map and changes it in place.
func (dp *Datapath) UpdateIdentities(u IdentityUpdate) (err error) {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	if dp.closed {
		return fmt.Errorf("update identities: datapath closed")
	}
	if dp.desired == nil || dp.compiled == nil || dp.mirror == nil || u.Selectors == nil {
		return ErrFullSyncNeeded
	}
	c := dp.compiled
	selects := selectsFunc(u.Selectors)
	// Wildcard selectors are compiled from their membership: one that
	// holds every reserved identity (a candidate, see wildcardSelectors)
	// could change, so it takes a full Sync. Others stay non-wildcard
	// whatever identities join.
	reserved := identity.ReservedIdentities()
	for _, s := range c.referenced {
		if c.wildcard[s] {
			return ErrFullSyncNeeded
		}
		all := true
		for _, r := range reserved {
			if !selects(s, r) {
				all = false
				break
			}
		}
		if all {
			return ErrFullSyncNeeded
		}
	}
	newLists := make(map[identity.NumericIdentity][]resolved.SelectorID, len(u.Identities))
	for _, id := range u.Identities {
		var l []resolved.SelectorID
		for _, s := range c.referenced { // ascending: the list is sorted
			if selects(s, id) {
				l = append(l, s)
			}
		}
		newLists[id] = l
	}

	mir := dp.mirror
	changed := false
	defer func() {
		if err != nil {
			dp.forget()
			dp.desired = nil // the next Sync rewrites everything
			if changed {
				if berr := dp.bumpRevision(0); berr != nil {
					err = errors.Join(err, fmt.Errorf("update identities: %w", berr))
				}
			}
		}
	}()
	curSel := mir.sel
	// 1. selector lists: final for new identities, union for others.
	for id, sels := range newLists {
		if sameSelectors(curSel[id], sels) || len(sels) == 0 {
			continue
		}
		list := sels
		if len(curSel[id]) > 0 {
			if list = unionSelectors(curSel[id], sels); len(list) > MaxSelectorsPerIdentity {
				list = sels
			}
		}
		if err := dp.putSelectorList(id, list); err != nil {
			return fmt.Errorf("update identities: %w", err)
		}
		changed = true
		if len(curSel[id]) == 0 {
			curSel[id] = sels
		}
	}
	// 2. ipcache additions and changes.
	curIP := mir.ip
	for p, id := range u.IPCache {
		k := ipcacheKey(p)
		if old, ok := curIP[k]; ok && old == uint32(id) {
			continue
		}
		if err := dp.objs.BwIpcache.Put(&k, &bpfBwIpcacheValue{Identity: uint32(id)}); err != nil {
			return fmt.Errorf("update identities: ipcache %s: %w", p, err)
		}
		curIP[k] = uint32(id)
		changed = true
	}
	// 3. exact lists; identities in no referenced selector lose theirs.
	for id, sels := range newLists {
		if len(sels) == 0 {
			if _, ok := curSel[id]; ok {
				if err := dp.objs.BwIdSelectors.Delete(uint32(id)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					return fmt.Errorf("update identities: delete selector list of %d: %w", id, err)
				}
				delete(curSel, id)
				changed = true
			}
			continue
		}
		if !sameSelectors(curSel[id], sels) {
			if err := dp.putSelectorList(id, sels); err != nil {
				return fmt.Errorf("update identities: %w", err)
			}
			curSel[id] = sels
			changed = true
		}
	}
	// 4. removed prefixes.
	for _, p := range u.Delete {
		k := ipcacheKey(p)
		if _, ok := curIP[k]; !ok {
			continue
		}
		if err := dp.objs.BwIpcache.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("update identities: delete ipcache %s: %w", p, err)
		}
		delete(curIP, k)
		changed = true
	}
	// 5. revision.
	if changed {
		if err := dp.bumpRevision(u.Revision); err != nil {
			return fmt.Errorf("update identities: %w", err)
		}
	}
	// The desired state and compiled tables follow (what a later Sync or
	// attach starts from, and what Compiled reports).
	for p, id := range u.IPCache {
		dp.desired.IPCache[p] = id
	}
	for _, p := range u.Delete {
		delete(dp.desired.IPCache, p)
	}
	dp.desired.Selectors = u.Selectors
	dp.desired.Revision = u.Revision
	for id, sels := range newLists {
		if len(sels) == 0 {
			delete(c.SelectorLists, id)
		} else {
			c.SelectorLists[id] = sels
		}
		if len(sels) > MaxSelectorsPerIdentity {
			if _, was := c.Overflowed[id]; !was {
				dp.raiseIdentityOverflow(id, len(sels))
			}
			c.Overflowed[id] = len(sels)
		} else {
			delete(c.Overflowed, id)
		}
	}
	// These lists follow u.Selectors, the others still c.members: an
	// incremental sync lists these again from its own selector set.
	for id := range newLists {
		c.relisted[id] = struct{}{}
	}
	dp.counts["ipcache"] = len(dp.desired.IPCache)
	dp.counts["id_selectors"] = len(c.SelectorLists)
	return nil
}

// selectsFunc answers membership from a selector set: directly when it can,
// else by a binary search of the sorted members.
func selectsFunc(s resolved.SelectorSet) func(resolved.SelectorID, identity.NumericIdentity) bool {
	if m, ok := s.(interface {
		Selects(resolved.SelectorID, identity.NumericIdentity) bool
	}); ok {
		return m.Selects
	}
	return func(sel resolved.SelectorID, id identity.NumericIdentity) bool {
		_, found := slices.BinarySearch(s.Identities(sel), id)
		return found
	}
}
