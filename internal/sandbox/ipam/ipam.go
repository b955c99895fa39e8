// Package ipam hands out addresses from one prefix to named owners and
// persists the assignment in a JSON file, so an agent restart keeps every
// address.
//
// Invariants: an owner holds at most one address; an address has at most
// one owner; the first Reserved addresses of the prefix (and its last, the
// broadcast for IPv4) are never handed out. The preferred address of an
// owner is derived from a hash of its name, so recreating an owner usually
// yields the same address.
package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
)

// Allocator assigns addresses of Prefix. It is safe for concurrent use
// within one process; the file is the only cross-process state.
type Allocator struct {
	mu       sync.Mutex
	file     string
	prefix   netip.Prefix
	reserved int
	owners   map[string]netip.Addr
}

type fileFormat struct {
	Prefix netip.Prefix          `json:"prefix"`
	Owners map[string]netip.Addr `json:"owners"`
}

// Open loads (or starts) the allocation file for prefix. reserved is the
// number of leading addresses never handed out (network address included).
func Open(file string, prefix netip.Prefix, reserved int) (*Allocator, error) {
	prefix = prefix.Masked()
	if !prefix.IsValid() {
		return nil, errors.New("ipam: invalid prefix")
	}
	a := &Allocator{file: file, prefix: prefix, reserved: reserved, owners: map[string]netip.Addr{}}
	b, err := os.ReadFile(file)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read %s: %w", file, err)
	default:
		var ff fileFormat
		if err := json.Unmarshal(b, &ff); err != nil {
			return nil, fmt.Errorf("parse %s: %w", file, err)
		}
		if ff.Prefix != prefix {
			return nil, fmt.Errorf("%s: allocations are for %v, not %v", file, ff.Prefix, prefix)
		}
		for o, ip := range ff.Owners {
			a.owners[o] = ip
		}
	}
	return a, nil
}

func (a *Allocator) size() *big.Int {
	bits := a.prefix.Addr().BitLen() - a.prefix.Bits()
	return new(big.Int).Lsh(big.NewInt(1), uint(bits))
}

func (a *Allocator) nth(n *big.Int) netip.Addr {
	base := new(big.Int).SetBytes(a.prefix.Addr().AsSlice())
	v := new(big.Int).Add(base, n).Bytes()
	buf := make([]byte, a.prefix.Addr().BitLen()/8)
	copy(buf[len(buf)-len(v):], v)
	ip, _ := netip.AddrFromSlice(buf)
	return ip
}

// usable is the number of assignable offsets: [reserved, size-1) for IPv4
// (the last is broadcast), [reserved, size) for IPv6.
func (a *Allocator) usable() (first, count *big.Int) {
	size := a.size()
	first = big.NewInt(int64(a.reserved))
	count = new(big.Int).Sub(size, first)
	if a.prefix.Addr().Is4() {
		count.Sub(count, big.NewInt(1))
	}
	return first, count
}

// Allocate returns owner's address, assigning one if it has none.
func (a *Allocator) Allocate(owner string) (netip.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ip, ok := a.owners[owner]; ok {
		return ip, nil
	}
	first, count := a.usable()
	if count.Sign() <= 0 {
		return netip.Addr{}, fmt.Errorf("ipam: %v has no usable addresses", a.prefix)
	}
	used := map[netip.Addr]bool{}
	for _, ip := range a.owners {
		used[ip] = true
	}
	h := fnv.New64a()
	h.Write([]byte(owner))
	start := new(big.Int).Mod(new(big.Int).SetUint64(h.Sum64()), count)
	// Probe linearly from the preferred offset; bounded by the range size
	// (capped so huge IPv6 ranges do not loop forever when nearly full).
	limit := count
	if limit.Cmp(big.NewInt(1<<20)) > 0 {
		limit = big.NewInt(1 << 20)
	}
	off := new(big.Int).Set(start)
	for i := big.NewInt(0); i.Cmp(limit) < 0; i.Add(i, big.NewInt(1)) {
		ip := a.nth(new(big.Int).Add(first, off))
		if !used[ip] {
			a.owners[owner] = ip
			if err := a.save(); err != nil {
				delete(a.owners, owner)
				return netip.Addr{}, err
			}
			return ip, nil
		}
		off.Add(off, big.NewInt(1))
		off.Mod(off, count)
	}
	return netip.Addr{}, fmt.Errorf("ipam: %v is exhausted", a.prefix)
}

// Claim assigns a specific address to owner (e.g. a fixed ClusterIP).
func (a *Allocator) Claim(owner string, ip netip.Addr) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.prefix.Contains(ip) {
		return fmt.Errorf("ipam: %v is outside %v", ip, a.prefix)
	}
	if cur, ok := a.owners[owner]; ok && cur == ip {
		return nil
	}
	for o, used := range a.owners {
		if used == ip && o != owner {
			return fmt.Errorf("ipam: %v is already assigned to %s", ip, o)
		}
	}
	prev, had := a.owners[owner]
	a.owners[owner] = ip
	if err := a.save(); err != nil {
		if had {
			a.owners[owner] = prev
		} else {
			delete(a.owners, owner)
		}
		return err
	}
	return nil
}

// Release frees owner's address; releasing an unknown owner is a no-op.
func (a *Allocator) Release(owner string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.owners[owner]; !ok {
		return nil
	}
	delete(a.owners, owner)
	return a.save()
}

// Lookup returns owner's address if it has one.
func (a *Allocator) Lookup(owner string) (netip.Addr, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ip, ok := a.owners[owner]
	return ip, ok
}

// Owners returns a copy of every assignment.
func (a *Allocator) Owners() map[string]netip.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]netip.Addr, len(a.owners))
	for o, ip := range a.owners {
		out[o] = ip
	}
	return out
}

func (a *Allocator) save() error {
	b, err := json.MarshalIndent(fileFormat{Prefix: a.prefix, Owners: a.owners}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode allocations: %w", err)
	}
	return WriteFileAtomic(a.file, b)
}

// WriteFileAtomic replaces file with data through a rename, so readers see
// the old or the new content, never a mix.
func WriteFileAtomic(file string, data []byte) error {
	dir := filepath.Dir(file)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(file)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", file, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", file, err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", file, err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", file, err)
	}
	return nil
}
