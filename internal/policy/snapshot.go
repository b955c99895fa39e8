package policy

import (
	"maps"
	"net/netip"
	"sort"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// Snapshot is an immutable view of the repository at one revision: every
// endpoint with its resolved policy, selector membership and the ipcache.
// Everything reachable from it is read-only.
type Snapshot struct {
	Revision  uint64
	Endpoints map[EndpointKey]*Endpoint
	Selectors *SelectorSnapshot
	IPCache   *IPCache

	alloc    *identity.Allocator
	policies map[string]*installedPolicy
}

// Snapshot returns the current state. Taking a snapshot is O(endpoints +
// selectors) and reuses the previous one while nothing changed.
func (r *Repository) Snapshot() *Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.snapshotLocked()
}

func (r *Repository) snapshotLocked() *Snapshot {
	if r.snap != nil {
		return r.snap
	}
	s := &Snapshot{
		Revision:  r.revision,
		Endpoints: maps.Clone(r.endpoints),
		Selectors: r.sels.snapshot(),
		alloc:     r.alloc,
		policies:  maps.Clone(r.policies),
	}
	if r.ipcache == nil {
		r.ipcache = r.buildIPCache()
	} else if len(r.ipPending) > 0 {
		r.ipcache = r.ipcache.withHosts(r.learnedHosts())
	}
	clear(r.ipPending)
	s.IPCache = r.ipcache
	r.snap = s
	return s
}

func (r *Repository) buildIPCache() *IPCache {
	pods := make(map[netip.Addr]podAddr, len(r.podIPs))
	for a, k := range r.podIPs {
		pods[a] = podAddr{id: r.endpoints[k].Identity, key: k}
	}
	prefixes := make(map[netip.Prefix]identity.NumericIdentity, len(r.cidrIDs)+len(r.fqdn.idOfIP)+2)
	// Every address resolves to some entry: the datapath's trie never
	// misses, and agrees with Lookup.
	prefixes[netip.MustParsePrefix("0.0.0.0/0")] = identity.WorldIPv4
	prefixes[netip.MustParsePrefix("::/0")] = identity.WorldIPv6
	for p, id := range r.cidrIDs {
		prefixes[p] = id
	}
	for a, id := range r.fqdn.idOfIP {
		prefixes[netip.PrefixFrom(a, a.BitLen())] = id
	}
	return newIPCache(pods, prefixes)
}

// Labels returns the labels of an identity.
func (s *Snapshot) Labels(id identity.NumericIdentity) (identity.Labels, bool) {
	return s.alloc.Lookup(id)
}

// EndpointKeys returns the endpoints, sorted.
func (s *Snapshot) EndpointKeys() []EndpointKey {
	keys := make([]EndpointKey, 0, len(s.Endpoints))
	for k := range s.Endpoints {
		keys = append(keys, k)
	}
	sortKeys(keys)
	return keys
}

// Policies returns the installed policies, sorted.
func (s *Snapshot) Policies() []resolved.PolicyRef {
	out := make([]resolved.PolicyRef, 0, len(s.policies))
	for _, p := range s.policies {
		out = append(out, p.cp.ref)
	}
	sort.Slice(out, func(i, j int) bool { return policyKey(out[i]) < policyKey(out[j]) })
	return out
}
