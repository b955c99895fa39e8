package fqdn

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func addr(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}) }

func TestTTLMinimumGraceAndInUse(t *testing.T) {
	c := New(Options{MinTTL: 10 * time.Second, Grace: 5 * time.Second})
	c.Update(t0, 1, "API.github.com", []netip.Addr{addr(1)}, 1*time.Second) // raised to MinTTL
	c.Update(t0, 1, "s3.amazonaws.com.", []netip.Addr{addr(2)}, 60*time.Second)
	c.Update(t0, 2, "api.github.com.", []netip.Addr{addr(3)}, 30*time.Second) // another pod
	if got := c.Addresses("api.github.com"); len(got) != 2 {
		t.Fatalf("union over endpoints: %v", got)
	}
	// TTL (raised to 10s) + grace 5s: still there at 15s, gone after.
	if ch := c.Expire(t0.Add(15*time.Second), nil); len(ch) != 0 {
		t.Fatalf("expired too early: %v", ch)
	}
	// In use by a connection: kept past the grace.
	inUse := func(a netip.Addr) bool { return a == addr(1) }
	if ch := c.Expire(t0.Add(16*time.Second), inUse); len(ch) != 0 {
		t.Fatalf("expired an address in use: %v", ch)
	}
	ch := c.Expire(t0.Add(16*time.Second), nil)
	if len(ch) != 1 || ch[0] != "api.github.com." {
		t.Fatalf("changed %v", ch)
	}
	if got := c.Addresses("api.github.com"); len(got) != 1 || got[0] != addr(3) {
		t.Fatalf("after expiry: %v", got)
	}
	// A fresh answer extends, never shortens.
	c.Update(t0.Add(20*time.Second), 1, "s3.amazonaws.com", []netip.Addr{addr(2)}, 1*time.Second)
	if ch := c.Expire(t0.Add(64*time.Second), nil); len(ch) != 1 || ch[0] != "api.github.com." {
		t.Fatalf("changed %v", ch)
	}
	if got := c.Addresses("s3.amazonaws.com"); len(got) != 1 {
		t.Fatalf("s3 shortened: %v", got)
	}
}

func TestBounds(t *testing.T) {
	c := New(Options{MaxIPsPerName: 3, MaxNamesPerEndpoint: 4})
	var ips []netip.Addr
	for i := 0; i < 10; i++ {
		ips = append(ips, addr(i))
	}
	c.Update(t0, 1, "many.example.com", ips, time.Minute)
	if got := c.Addresses("many.example.com"); len(got) != 3 {
		t.Fatalf("per-name limit: %d addresses", len(got))
	}
	for i := 0; i < 6; i++ {
		ch := c.Update(t0, 1, fmt.Sprintf("n%d.example.com", i), ips[:1], time.Duration(i+1)*time.Minute)
		if i >= 3 && (len(ch) != 2 || ch[1] == ch[0]) {
			t.Fatalf("insert %d: changed %v, want the name and one evicted", i, ch)
		}
	}
	if e, _ := c.Len(); e != 4 {
		t.Fatalf("%d entries, want the limit 4", e)
	}
	// The soonest-expiring went: the four latest remain.
	for i := 2; i < 6; i++ {
		if len(c.Addresses(fmt.Sprintf("n%d.example.com", i))) != 1 {
			t.Fatalf("n%d evicted", i)
		}
	}
}

// A flood of unique names from every endpoint keeps the cache (and the
// heap) within its bounds.
func TestFloodBounded(t *testing.T) {
	c := New(Options{MaxNamesPerEndpoint: 500})
	flood := func(from, to int) {
		for i := from; i < to; i++ {
			c.Update(t0.Add(time.Duration(i)*time.Millisecond), uint32(i%4), fmt.Sprintf("u%d.flood.example.com", i), []netip.Addr{addr(i % 60000)}, time.Hour)
		}
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	flood(0, 20000)
	after20k := heap()
	flood(20000, 100000)
	after100k := heap()
	if e, a := c.Len(); e > 4*500 || a != e || e < 4*450 {
		t.Fatalf("%d entries, %d addresses: want at most 2000", e, a)
	}
	if len(c.All()) > 2000 {
		t.Fatalf("%d names", len(c.All()))
	}
	// Five times the names, the same bound: the heap does not follow.
	if after100k > after20k+8<<20 {
		t.Fatalf("heap grew from %d to %d bytes with the cache bounded", after20k, after100k)
	}
}

func TestSaveLoad(t *testing.T) {
	c := New(Options{})
	c.Update(t0, 1, "api.github.com", []netip.Addr{addr(1), netip.MustParseAddr("2001:db8::1")}, time.Minute)
	c.Update(t0, 2, "s3.amazonaws.com", []netip.Addr{addr(2)}, time.Hour)
	path := filepath.Join(t.TempDir(), "fqdn.json")
	if err := c.Save(path); err != nil {
		t.Fatal(err)
	}
	d := New(Options{})
	if err := d.Load(path); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(d.All()) != fmt.Sprint(c.All()) {
		t.Fatalf("loaded %v, saved %v", d.All(), c.All())
	}
	// Expiry times survive: the minute-long entry expires, the hour one stays.
	if ch := d.Expire(t0.Add(10*time.Minute), nil); len(ch) != 1 || ch[0] != "api.github.com." {
		t.Fatalf("changed %v", ch)
	}
	if err := New(Options{}).Load(filepath.Join(t.TempDir(), "missing")); err != nil {
		t.Fatalf("missing file: %v", err)
	}
}
