// Package fqdn is the agent's memory of what the DNS proxy let pods learn:
// per endpoint, the addresses each allowed name resolved to and until when
// they are valid. Its union over endpoints (per name) is what toFQDNs
// selectors select (policy.Repository.SetFQDNs).
//
// Invariants:
//   - An address is valid from the answer that taught it until its TTL
//     (at least MinTTL) has run out, then for Grace more, and longer while
//     InUse says a connection still uses it.
//   - Bounded: at most MaxIPsPerName addresses per (endpoint, name) and
//     MaxNamesPerEndpoint names per endpoint; beyond them the entries that
//     expire soonest (a tenth of the bound at a time) are evicted at once,
//     whatever their grace. A flood of
//     unique names costs at most endpoints × MaxNamesPerEndpoint entries.
//   - The state persists (Save/Load) so that a restarted agent restores
//     what pods learned before it enforces again.
package fqdn

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/bulwark-net/bulwark/internal/fqdn/matchpattern"
)

// Options bound and time the cache. Zero values take the defaults.
type Options struct {
	MinTTL              time.Duration // default 2s (Cilium: tofqdns-min-ttl)
	Grace               time.Duration // default 5s after expiry (Cilium: tofqdns-idle-connection-grace-period)
	MaxIPsPerName       int           // default 50 (Cilium: tofqdns-endpoint-max-ip-per-hostname)
	MaxNamesPerEndpoint int           // default 2000
}

func (o Options) withDefaults() Options {
	if o.MinTTL <= 0 {
		o.MinTTL = 2 * time.Second
	}
	if o.Grace < 0 {
		o.Grace = 0
	} else if o.Grace == 0 {
		o.Grace = 5 * time.Second
	}
	if o.MaxIPsPerName <= 0 {
		o.MaxIPsPerName = 50
	}
	if o.MaxNamesPerEndpoint <= 0 {
		o.MaxNamesPerEndpoint = 2000
	}
	return o
}

// Cache holds learned names per endpoint. Safe for concurrent use.
type Cache struct {
	opts Options
	mu   sync.Mutex
	eps  map[uint32]map[string]*entry // endpoint → normalized name → entry
}

type entry struct {
	ips map[netip.Addr]time.Time // address → expiry (TTL end, before grace)
}

// expiry is the latest expiry of an entry's addresses.
func (e *entry) expiry() time.Time {
	var t time.Time
	for _, x := range e.ips {
		if x.After(t) {
			t = x
		}
	}
	return t
}

// New returns an empty cache.
func New(opts Options) *Cache {
	return &Cache{opts: opts.withDefaults(), eps: map[uint32]map[string]*entry{}}
}

// Options returns the cache's effective options.
func (c *Cache) Options() Options { return c.opts }

// Update records that endpoint ep learned name → ips with a TTL, and
// returns the names whose addresses (over all endpoints) may have changed:
// the name itself and any evicted to stay within the bounds.
func (c *Cache) Update(now time.Time, ep uint32, name string, ips []netip.Addr, ttl time.Duration) []string {
	name = matchpattern.Normalize(name)
	if name == "" || len(ips) == 0 {
		return nil
	}
	if ttl < c.opts.MinTTL {
		ttl = c.opts.MinTTL
	}
	exp := now.Add(ttl)
	c.mu.Lock()
	defer c.mu.Unlock()
	names := c.eps[ep]
	if names == nil {
		names = map[string]*entry{}
		c.eps[ep] = names
	}
	changed := []string{name}
	e := names[name]
	if e == nil {
		if len(names) >= c.opts.MaxNamesPerEndpoint {
			// Evict a tenth at once: a flood costs one sort per tenth
			// of the bound, not one per name.
			n := len(names) - c.opts.MaxNamesPerEndpoint + 1 + c.opts.MaxNamesPerEndpoint/10
			changed = append(changed, evictSoonest(names, n)...)
		}
		e = &entry{ips: map[netip.Addr]time.Time{}}
		names[name] = e
	}
	for _, ip := range ips {
		ip = ip.Unmap()
		if old, ok := e.ips[ip]; !ok || exp.After(old) {
			e.ips[ip] = exp
		}
	}
	if over := len(e.ips) - c.opts.MaxIPsPerName; over > 0 {
		type ipExp struct {
			ip  netip.Addr
			exp time.Time
		}
		all := make([]ipExp, 0, len(e.ips))
		for ip, x := range e.ips {
			all = append(all, ipExp{ip, x})
		}
		sort.Slice(all, func(i, j int) bool {
			if !all[i].exp.Equal(all[j].exp) {
				return all[i].exp.Before(all[j].exp)
			}
			return all[i].ip.Less(all[j].ip)
		})
		for _, x := range all[:over] {
			delete(e.ips, x.ip)
		}
	}
	return changed
}

// evictSoonest removes the n entries that expire first and returns their
// names.
func evictSoonest(names map[string]*entry, n int) []string {
	type nameExp struct {
		name string
		exp  time.Time
	}
	all := make([]nameExp, 0, len(names))
	for nm, e := range names {
		all = append(all, nameExp{nm, e.expiry()})
	}
	sort.Slice(all, func(i, j int) bool {
		if !all[i].exp.Equal(all[j].exp) {
			return all[i].exp.Before(all[j].exp)
		}
		return all[i].name < all[j].name
	})
	out := make([]string, 0, n)
	for _, x := range all[:min(n, len(all))] {
		delete(names, x.name)
		out = append(out, x.name)
	}
	return out
}

// Addresses returns the addresses of a name over all endpoints, sorted
// (what toFQDNs selectors see for it).
func (c *Cache) Addresses(name string) []netip.Addr {
	name = matchpattern.Normalize(name)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.addressesLocked(name)
}

func (c *Cache) addressesLocked(name string) []netip.Addr {
	set := map[netip.Addr]struct{}{}
	for _, names := range c.eps {
		if e := names[name]; e != nil {
			for ip := range e.ips {
				set[ip] = struct{}{}
			}
		}
	}
	return sortedAddrs(set)
}

func sortedAddrs(set map[netip.Addr]struct{}) []netip.Addr {
	out := make([]netip.Addr, 0, len(set))
	for a := range set {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out
}

// All returns every name with its addresses over all endpoints.
func (c *Cache) All() map[string][]netip.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := map[string]bool{}
	out := map[string][]netip.Addr{}
	for _, names := range c.eps {
		for n := range names {
			if !seen[n] {
				seen[n] = true
				out[n] = c.addressesLocked(n)
			}
		}
	}
	return out
}

// Expire removes the addresses whose TTL ended more than Grace before now
// and that inUse (may be nil) does not report as used by a connection; it
// returns the names whose addresses changed.
func (c *Cache) Expire(now time.Time, inUse func(netip.Addr) bool) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := map[string]bool{}
	for ep, names := range c.eps {
		for n, e := range names {
			for ip, exp := range e.ips {
				if now.Sub(exp) <= c.opts.Grace || (inUse != nil && inUse(ip)) {
					continue
				}
				delete(e.ips, ip)
				changed[n] = true
			}
			if len(e.ips) == 0 {
				delete(names, n)
			}
		}
		if len(names) == 0 {
			delete(c.eps, ep)
		}
	}
	out := make([]string, 0, len(changed))
	for n := range changed {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// ForgetEndpoint drops what an endpoint learned (its pod is gone) and
// returns the names whose addresses may have changed.
func (c *Cache) ForgetEndpoint(ep uint32) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for n := range c.eps[ep] {
		out = append(out, n)
	}
	delete(c.eps, ep)
	sort.Strings(out)
	return out
}

// Len returns the number of (endpoint, name) entries and of addresses in
// them.
func (c *Cache) Len() (entries, addrs int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, names := range c.eps {
		entries += len(names)
		for _, e := range names {
			addrs += len(e.ips)
		}
	}
	return entries, addrs
}

// persisted is the file format of Save/Load.
type persisted struct {
	Version   int                 `json:"version"`
	Endpoints []persistedEndpoint `json:"endpoints"`
}

type persistedEndpoint struct {
	ID    uint32          `json:"id"`
	Names []persistedName `json:"names"`
}

type persistedName struct {
	Name string            `json:"name"`
	IPs  []persistedIPTime `json:"ips"`
}

type persistedIPTime struct {
	IP      netip.Addr `json:"ip"`
	Expires time.Time  `json:"expires"`
}

// Save writes the cache to path atomically (write, fsync, rename).
func (c *Cache) Save(path string) error {
	c.mu.Lock()
	p := persisted{Version: 1}
	for ep, names := range c.eps {
		pe := persistedEndpoint{ID: ep}
		for n, e := range names {
			pn := persistedName{Name: n}
			for ip, x := range e.ips {
				pn.IPs = append(pn.IPs, persistedIPTime{ip, x})
			}
			sort.Slice(pn.IPs, func(i, j int) bool { return pn.IPs[i].IP.Less(pn.IPs[j].IP) })
			pe.Names = append(pe.Names, pn)
		}
		sort.Slice(pe.Names, func(i, j int) bool { return pe.Names[i].Name < pe.Names[j].Name })
		p.Endpoints = append(p.Endpoints, pe)
	}
	c.mu.Unlock()
	sort.Slice(p.Endpoints, func(i, j int) bool { return p.Endpoints[i].ID < p.Endpoints[j].ID })
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode FQDN cache: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".fqdn-*")
	if err != nil {
		return fmt.Errorf("save FQDN cache: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("save FQDN cache: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save FQDN cache: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save FQDN cache: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("save FQDN cache: %w", err)
	}
	return nil
}

// Load replaces the cache's content with path's (a missing file is an
// empty cache). Bounds apply to what is loaded.
func (c *Cache) Load(path string) error {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load FQDN cache: %w", err)
	}
	var p persisted
	if err := json.Unmarshal(b, &p); err != nil {
		return fmt.Errorf("load FQDN cache %s: %w", path, err)
	}
	if p.Version != 1 {
		return fmt.Errorf("load FQDN cache %s: unknown version %d", path, p.Version)
	}
	c.mu.Lock()
	c.eps = map[uint32]map[string]*entry{}
	c.mu.Unlock()
	for _, pe := range p.Endpoints {
		for _, pn := range pe.Names {
			for _, x := range pn.IPs {
				if !x.IP.IsValid() {
					return fmt.Errorf("load FQDN cache %s: endpoint %d name %s: invalid address", path, pe.ID, pn.Name)
				}
				c.restore(pe.ID, pn.Name, x.IP, x.Expires)
			}
		}
	}
	return nil
}

// restore puts back one address with its recorded expiry.
func (c *Cache) restore(ep uint32, name string, ip netip.Addr, exp time.Time) {
	name = matchpattern.Normalize(name)
	c.mu.Lock()
	defer c.mu.Unlock()
	names := c.eps[ep]
	if names == nil {
		names = map[string]*entry{}
		c.eps[ep] = names
	}
	e := names[name]
	if e == nil {
		if len(names) >= c.opts.MaxNamesPerEndpoint {
			return
		}
		e = &entry{ips: map[netip.Addr]time.Time{}}
		names[name] = e
	}
	if len(e.ips) < c.opts.MaxIPsPerName {
		e.ips[ip.Unmap()] = exp
	}
}
