package policy

import (
	"net/netip"
	"slices"
	"sort"

	"github.com/bulwark-net/bulwark/internal/identity"
)

// IPCacheEntry maps a prefix to an identity. Pod addresses are host
// prefixes (/32, /128) with their pod's identity; CIDR and FQDN-learned
// prefixes have local identities.
type IPCacheEntry struct {
	Prefix   netip.Prefix
	Identity identity.NumericIdentity
	// Endpoint is set for pod addresses.
	Endpoint *EndpointKey
}

// IPCache is an immutable IP → identity map with longest-prefix match.
// Invariant: a pod address resolves to its pod's identity, whatever CIDR
// prefix covers it (CIDR selectors never select cluster endpoints, as in
// Cilium); 0.0.0.0/0 and ::/0 are always present (world-ipv4, world-ipv6),
// so every address has an entry and a longest-prefix-match datapath loaded
// from Entries decides exactly as Lookup.
type IPCache struct {
	pods     map[netip.Addr]podAddr
	prefixes map[netip.Prefix]identity.NumericIdentity
	lens4    []int // distinct prefix lengths, longest first
	lens6    []int
	// over: host prefixes changed since prefixes was built (learned DNS
	// addresses), which win over prefixes; deleted ones are marked.
	// Kept small (see withHosts), so an update copies O(change).
	over map[netip.Prefix]overEntry
}

type overEntry struct {
	id      identity.NumericIdentity
	deleted bool
}

// overCompact bounds the overlay: past it, withHosts builds a new base.
const overCompact = 256

// prefix returns the entry of exactly p among prefixes and the overlay.
func (c *IPCache) prefix(p netip.Prefix) (identity.NumericIdentity, bool) {
	if e, ok := c.over[p]; ok {
		return e.id, !e.deleted
	}
	id, ok := c.prefixes[p]
	return id, ok
}

// eachPrefix calls fn for every prefix entry (pods' host entries not
// filtered).
func (c *IPCache) eachPrefix(fn func(p netip.Prefix, id identity.NumericIdentity)) {
	for p, id := range c.prefixes {
		if _, ok := c.over[p]; !ok {
			fn(p, id)
		}
	}
	for p, e := range c.over {
		if !e.deleted {
			fn(p, e.id)
		}
	}
}

// withHosts returns the cache with host prefixes set (ok) or removed (not
// ok), sharing what did not change: O(len(set) + overlay) while the
// overlay stays under overCompact, O(entries) once in overCompact updates.
func (c *IPCache) withHosts(set map[netip.Prefix]overEntry) *IPCache {
	if len(c.over)+len(set) > overCompact {
		prefixes := make(map[netip.Prefix]identity.NumericIdentity, len(c.prefixes)+len(set))
		c.eachPrefix(func(p netip.Prefix, id identity.NumericIdentity) { prefixes[p] = id })
		for p, e := range set {
			if e.deleted {
				delete(prefixes, p)
			} else {
				prefixes[p] = e.id
			}
		}
		return newIPCache(c.pods, prefixes)
	}
	out := &IPCache{pods: c.pods, prefixes: c.prefixes, lens4: c.lens4, lens6: c.lens6,
		over: make(map[netip.Prefix]overEntry, len(c.over)+len(set))}
	for p, e := range c.over {
		out.over[p] = e
	}
	for p, e := range set {
		out.over[p] = e
		if e.deleted {
			continue // a length without entries only costs a lookup
		}
		if p.Addr().Is4() {
			if !slices.Contains(out.lens4, p.Bits()) {
				out.lens4 = sortedLens(append(slices.Clone(out.lens4), p.Bits()))
			}
		} else if !slices.Contains(out.lens6, p.Bits()) {
			out.lens6 = sortedLens(append(slices.Clone(out.lens6), p.Bits()))
		}
	}
	return out
}

func sortedLens(l []int) []int {
	sort.Sort(sort.Reverse(sort.IntSlice(l)))
	return l
}

// Exact returns what Range gives for exactly prefix p, if anything.
func (c *IPCache) Exact(p netip.Prefix) (identity.NumericIdentity, bool) {
	if p.Bits() == p.Addr().BitLen() {
		if pa, ok := c.pods[p.Addr()]; ok {
			return pa.id, true
		}
	}
	return c.prefix(p)
}

type podAddr struct {
	id  identity.NumericIdentity
	key EndpointKey
}

func newIPCache(pods map[netip.Addr]podAddr, prefixes map[netip.Prefix]identity.NumericIdentity) *IPCache {
	c := &IPCache{pods: pods, prefixes: prefixes}
	seen4, seen6 := map[int]bool{}, map[int]bool{}
	for p := range prefixes {
		if p.Addr().Is4() {
			if !seen4[p.Bits()] {
				seen4[p.Bits()] = true
				c.lens4 = append(c.lens4, p.Bits())
			}
		} else if !seen6[p.Bits()] {
			seen6[p.Bits()] = true
			c.lens6 = append(c.lens6, p.Bits())
		}
	}
	sort.Sort(sort.Reverse(sort.IntSlice(c.lens4)))
	sort.Sort(sort.Reverse(sort.IntSlice(c.lens6)))
	return c
}

// Lookup returns the identity of an address.
func (c *IPCache) Lookup(a netip.Addr) identity.NumericIdentity {
	a = a.Unmap()
	if p, ok := c.pods[a]; ok {
		return p.id
	}
	lens := c.lens6
	if a.Is4() {
		lens = c.lens4
	}
	for _, bits := range lens {
		p, _ := a.Prefix(bits)
		if id, ok := c.prefix(p); ok {
			return id
		}
	}
	return identity.WorldFor(a)
}

// Endpoint returns the pod that owns an address.
func (c *IPCache) Endpoint(a netip.Addr) (EndpointKey, bool) {
	p, ok := c.pods[a.Unmap()]
	return p.key, ok
}

// Entries lists every entry, sorted by prefix.
func (c *IPCache) Entries() []IPCacheEntry {
	out := make([]IPCacheEntry, 0, len(c.pods)+len(c.prefixes))
	for a, p := range c.pods {
		k := p.key
		out = append(out, IPCacheEntry{Prefix: netip.PrefixFrom(a, a.BitLen()), Identity: p.id, Endpoint: &k})
	}
	c.eachPrefix(func(p netip.Prefix, id identity.NumericIdentity) {
		if _, isPod := c.pods[p.Addr()]; isPod && p.Bits() == p.Addr().BitLen() {
			return // the pod's entry wins
		}
		out = append(out, IPCacheEntry{Prefix: p, Identity: id})
	})
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].Prefix, out[j].Prefix
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c < 0
		}
		return a.Bits() < b.Bits()
	})
	return out
}

// Range calls fn for every entry of Entries, in no particular order and
// without building the sorted list (what a consumer that builds a map
// wants).
func (c *IPCache) Range(fn func(p netip.Prefix, id identity.NumericIdentity)) {
	for a, p := range c.pods {
		fn(netip.PrefixFrom(a, a.BitLen()), p.id)
	}
	c.eachPrefix(func(p netip.Prefix, id identity.NumericIdentity) {
		if _, isPod := c.pods[p.Addr()]; isPod && p.Bits() == p.Addr().BitLen() {
			return // the pod's entry wins
		}
		fn(p, id)
	})
}
