package ipam

import (
	"net/netip"
	"path/filepath"
	"testing"
)

func TestAllocatePersistRelease(t *testing.T) {
	file := filepath.Join(t.TempDir(), "ipam.json")
	p := netip.MustParsePrefix("10.244.7.0/29") // 8 addresses: .2-.6 usable with 2 reserved
	a, err := Open(file, p, 2)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Addr]string{}
	for _, o := range []string{"a", "b", "c", "d", "e"} {
		ip, err := a.Allocate(o)
		if err != nil {
			t.Fatalf("allocate %s: %v", o, err)
		}
		if ip.Compare(netip.MustParseAddr("10.244.7.2")) < 0 || ip.Compare(netip.MustParseAddr("10.244.7.6")) > 0 {
			t.Fatalf("%s got %v outside the usable range", o, ip)
		}
		if prev, dup := seen[ip]; dup {
			t.Fatalf("%v given to %s and %s", ip, prev, o)
		}
		seen[ip] = o
	}
	if _, err := a.Allocate("f"); err == nil {
		t.Fatal("allocation from a full range succeeded")
	}
	ipB, _ := a.Lookup("b")
	// Reopen: same assignments.
	a2, err := Open(file, p, 2)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := a2.Allocate("b"); got != ipB {
		t.Fatalf("after reopen b has %v, want %v", got, ipB)
	}
	if err := a2.Release("b"); err != nil {
		t.Fatal(err)
	}
	ipF, err := a2.Allocate("f")
	if err != nil || ipF != ipB {
		t.Fatalf("after release f got %v, %v; want the freed %v", ipF, err, ipB)
	}
	if err := a2.Claim("g", ipF); err == nil {
		t.Fatal("claiming an assigned address succeeded")
	}
	if _, err := Open(file, netip.MustParsePrefix("10.0.0.0/24"), 2); err == nil {
		t.Fatal("opening with another prefix succeeded")
	}
}

func TestIPv6(t *testing.T) {
	a, err := Open(filepath.Join(t.TempDir(), "v6.json"), netip.MustParsePrefix("fd00:b::/64"), 2)
	if err != nil {
		t.Fatal(err)
	}
	ip, err := a.Allocate("pod")
	if err != nil || !ip.Is6() || !netip.MustParsePrefix("fd00:b::/64").Contains(ip) {
		t.Fatalf("got %v, %v", ip, err)
	}
}
