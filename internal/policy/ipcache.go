package policy

import (
	"net/netip"
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
		if id, ok := c.prefixes[p]; ok {
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
	for p, id := range c.prefixes {
		if _, isPod := c.pods[p.Addr()]; isPod && p.Bits() == p.Addr().BitLen() {
			continue // the pod's entry wins
		}
		out = append(out, IPCacheEntry{Prefix: p, Identity: id})
	}
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
	for p, id := range c.prefixes {
		if _, isPod := c.pods[p.Addr()]; isPod && p.Bits() == p.Addr().BitLen() {
			continue // the pod's entry wins
		}
		fn(p, id)
	}
}
