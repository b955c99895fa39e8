package policy

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/bulwark-net/bulwark/internal/fqdn/matchpattern"
	"github.com/bulwark-net/bulwark/internal/identity"
)

// fqdnMatcher matches DNS names against toFQDNs selectors, with Cilium's
// matchpattern semantics (see internal/fqdn/matchpattern): lower case,
// "*" within one label, a leading "**." at any depth, anchored. Its
// String (the selector's canonical key) lists names and patterns lower
// case without the trailing dot, sorted.
type fqdnMatcher struct {
	names    []string
	patterns []string
	m        *matchpattern.Matcher
}

func newFQDNMatcher(names, patterns []string) (*fqdnMatcher, error) {
	f := &fqdnMatcher{}
	for _, n := range names {
		f.names = append(f.names, normalizeName(n))
	}
	for _, p := range patterns {
		f.patterns = append(f.patterns, normalizeName(p))
	}
	sort.Strings(f.names)
	sort.Strings(f.patterns)
	m, err := matchpattern.Compile(f.names, f.patterns)
	if err != nil {
		return nil, err
	}
	f.m = m
	return f, nil
}

// normalizeName is a name as the repository keys it: trimmed, lower case,
// without the trailing dot.
func normalizeName(n string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(n)), ".")
}

// Matches reports whether a DNS name is selected.
func (m *fqdnMatcher) Matches(name string) bool { return m.m.Match(name) }

func (m *fqdnMatcher) String() string {
	parts := make([]string, 0, len(m.names)+len(m.patterns))
	for _, n := range m.names {
		parts = append(parts, "matchName="+n)
	}
	for _, p := range m.patterns {
		parts = append(parts, "matchPattern="+p)
	}
	return strings.Join(parts, ",")
}

// fqdnState holds what the DNS proxy learned: name → IPs, and the local
// identity of each learned IP's /32 (/128) prefix.
//
// Invariant: for every indexed selector (sels), count[id] is the number of
// (name, address) pairs with a name the selector matches and an address
// whose identity is id; a selector's members are exactly the ids with a
// positive count. An update of one name touches only the selectors
// matching that name, so learning is O(selectors + addresses of the name),
// not O(names).
type fqdnState struct {
	ips    map[string]map[netip.Addr]struct{} // normalised name → addresses
	idOfIP map[netip.Addr]identity.NumericIdentity
	sels   map[string]*fqdnSelIndex // peer key → index
}

type fqdnSelIndex struct {
	m     *fqdnMatcher
	count map[identity.NumericIdentity]int
}

func newFQDNState() *fqdnState {
	return &fqdnState{ips: map[string]map[netip.Addr]struct{}{}, idOfIP: map[netip.Addr]identity.NumericIdentity{}, sels: map[string]*fqdnSelIndex{}}
}

// identitiesMatching returns the identities an FQDN selector selects,
// indexing the selector for later incremental updates.
func (f *fqdnState) identitiesMatching(m *fqdnMatcher) map[identity.NumericIdentity]struct{} {
	key := fqdnPeer(m).key
	ix := f.sels[key]
	if ix == nil {
		ix = &fqdnSelIndex{m: m, count: map[identity.NumericIdentity]int{}}
		for name, addrs := range f.ips {
			if !m.Matches(name) {
				continue
			}
			for a := range addrs {
				if id, ok := f.idOfIP[a]; ok {
					ix.count[id]++
				}
			}
		}
		f.sels[key] = ix
	}
	out := make(map[identity.NumericIdentity]struct{}, len(ix.count))
	for id := range ix.count {
		out[id] = struct{}{}
	}
	return out
}

// memberDelta is a change of one selector's membership.
type memberDelta struct {
	added, removed []identity.NumericIdentity
}

// setName replaces the addresses of one name (none: the name goes) and
// returns the membership changes of the indexed selectors. Addresses
// must have identities in idOfIP already.
func (f *fqdnState) setName(name string, addrs map[netip.Addr]struct{}) map[string]*memberDelta {
	old := f.ips[name]
	if len(addrs) == 0 {
		delete(f.ips, name)
	} else {
		f.ips[name] = addrs
	}
	deltas := map[string]*memberDelta{}
	for key, ix := range f.sels {
		if !ix.m.Matches(name) {
			continue
		}
		d := &memberDelta{}
		for a := range old {
			if _, keep := addrs[a]; keep {
				continue
			}
			if id, ok := f.idOfIP[a]; ok {
				if ix.count[id]--; ix.count[id] <= 0 {
					delete(ix.count, id)
					d.removed = append(d.removed, id)
				}
			}
		}
		for a := range addrs {
			if _, had := old[a]; had {
				continue
			}
			if id, ok := f.idOfIP[a]; ok {
				if ix.count[id]++; ix.count[id] == 1 {
					d.added = append(d.added, id)
				}
			}
		}
		if len(d.added)+len(d.removed) > 0 {
			deltas[key] = d
		}
	}
	return deltas
}

// applyFQDNDeltas applies membership changes to the live FQDN selectors;
// indexes of selectors that no longer exist are dropped.
func (c *selectorCache) applyFQDNDeltas(fq *fqdnState, deltas map[string]*memberDelta) {
	for key, d := range deltas {
		e, ok := c.byKey[key]
		if !ok {
			delete(fq.sels, key)
			continue
		}
		for _, id := range d.removed {
			delete(e.members, id)
			e.note(id, false)
		}
		for _, id := range d.added {
			e.members[id] = struct{}{}
			e.note(id, true)
		}
		c.touch(e.id)
	}
}

// Learn records that a DNS name resolved to addresses (what the DNS proxy
// saw): each address gets a local identity of its host prefix, labelled
// like a CIDR identity (so the same address has the same identity for
// every pod and name), and joins the toFQDNs selectors whose names match.
// Learning is additive; SetFQDN replaces, Forget removes a name.
func (r *Repository) Learn(name string, addrs ...netip.Addr) (Change, error) {
	name = normalizeName(name)
	r.mu.Lock()
	set := map[netip.Addr]struct{}{}
	for a := range r.fqdn.ips[name] {
		set[a] = struct{}{}
	}
	r.mu.Unlock()
	for _, a := range addrs {
		set[a.Unmap()] = struct{}{}
	}
	return r.SetFQDNs(map[string][]netip.Addr{name: keysOf(set)})
}

// Forget removes what was learned for a name; addresses no other name
// resolves to leave the ipcache.
func (r *Repository) Forget(name string) Change {
	ch, _ := r.SetFQDNs(map[string][]netip.Addr{name: nil})
	return ch
}

// SetFQDN makes addrs the addresses learned for a name (none: forget it).
func (r *Repository) SetFQDN(name string, addrs []netip.Addr) (Change, error) {
	return r.SetFQDNs(map[string][]netip.Addr{name: addrs})
}

// SetFQDNs replaces the learned addresses of several names in one update
// (one revision): what an agent restores after a restart and what an
// expiry sweep removes. A name with no addresses is forgotten. The whole
// update fails (changing nothing) on an empty name or invalid address.
func (r *Repository) SetFQDNs(names map[string][]netip.Addr) (Change, error) {
	norm := make(map[string]map[netip.Addr]struct{}, len(names))
	for n, addrs := range names {
		nn := normalizeName(n)
		if nn == "" {
			return Change{}, fmt.Errorf("learn FQDN: empty name")
		}
		set := norm[nn]
		if set == nil {
			set = map[netip.Addr]struct{}{}
			norm[nn] = set
		}
		for _, a := range addrs {
			if !a.IsValid() {
				return Change{}, fmt.Errorf("learn FQDN %s: invalid address", nn)
			}
			set[a.Unmap()] = struct{}{}
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fqdnRun = true
	defer func() { r.fqdnRun = false }()
	return r.run([]op{{0, func() { r.setFQDNs(norm) }}}), nil
}

func (r *Repository) setFQDNs(names map[string]map[netip.Addr]struct{}) {
	// 1. Identities for new addresses (before any selector counts them).
	for _, set := range names {
		for a := range set {
			if _, ok := r.fqdn.idOfIP[a]; ok {
				continue
			}
			p := netip.PrefixFrom(a, a.BitLen())
			id, created, err := r.alloc.AllocateCIDR(p)
			if err != nil {
				delete(set, a) // fail closed: the address stays world
				continue
			}
			r.registerIdentity(id, identity.CIDRLabels(p), created)
			r.fqdn.idOfIP[a] = id
			r.learnedChanged(a, id)
		}
	}
	// 2. Names, with the selectors they match.
	var dropped []netip.Addr
	for name, set := range names {
		for a := range r.fqdn.ips[name] {
			if _, keep := set[a]; !keep {
				dropped = append(dropped, a)
			}
		}
		deltas := r.fqdn.setName(name, set)
		for _, d := range deltas {
			r.journalIDs(d.added...)
			r.journalIDs(d.removed...)
		}
		r.sels.applyFQDNDeltas(r.fqdn, deltas)
	}
	// 3. Addresses no name resolves to any more leave the ipcache; their
	// identities leave selectors (collectIdentities). The allocator keeps
	// the number (where a releasing allocator is used, release it here).
	if len(dropped) == 0 {
		return
	}
	used := map[netip.Addr]bool{}
	for _, a := range dropped {
		used[a] = false
	}
	for _, set := range r.fqdn.ips {
		for a := range set {
			if _, ok := used[a]; ok {
				used[a] = true
			}
		}
	}
	for a, u := range used {
		if u {
			continue
		}
		if id, ok := r.fqdn.idOfIP[a]; ok {
			delete(r.fqdn.idOfIP, a)
			r.unusedIDs[id] = struct{}{}
			r.learnedChanged(a, id)
		}
	}
}

// FQDNs returns the learned names (normalised, without the trailing dot)
// with their addresses, sorted.
func (r *Repository) FQDNs() map[string][]netip.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string][]netip.Addr, len(r.fqdn.ips))
	for n, set := range r.fqdn.ips {
		out[n] = keysOf(set)
	}
	return out
}

func keysOf(set map[netip.Addr]struct{}) []netip.Addr {
	out := make([]netip.Addr, 0, len(set))
	for a := range set {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out
}
