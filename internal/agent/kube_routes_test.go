package agent

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/netip"
	"os"
	"sort"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
)

func TestSyncNodeRoutes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	b := make([]byte, 4)
	rand.Read(b)
	name := "bwk-rt-" + hex.EncodeToString(b)
	if err := netns.Create(name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Delete(name) })
	path := netns.Path(name)
	in := func(f func() error) {
		t.Helper()
		if err := netns.Do(path, f); err != nil {
			t.Fatal(err)
		}
	}
	in(func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth1"}); err != nil {
			return err
		}
		d, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if p, err := netlink.LinkByName("eth1"); err == nil {
			netlink.LinkSetUp(p)
		}
		a, _ := netlink.ParseAddr("192.0.2.1/24")
		if err := netlink.AddrAdd(d, a); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(d); err != nil {
			return err
		}
		// Someone else's route: never touched.
		_, dst, _ := net.ParseCIDR("10.99.0.0/16")
		return netlink.RouteAdd(&netlink.Route{Dst: dst, Gw: net.ParseIP("192.0.2.99")})
	})
	routes := func() []string {
		var out []string
		in(func() error {
			rs, err := netlink.RouteList(nil, netlink.FAMILY_V4)
			if err != nil {
				return err
			}
			for _, r := range rs {
				if r.Dst != nil && r.Gw != nil {
					out = append(out, r.Dst.String()+" via "+r.Gw.String())
				}
			}
			return nil
		})
		sort.Strings(out)
		return out
	}
	mp, ma := netip.MustParsePrefix, netip.MustParseAddr
	check := func(want ...string) {
		t.Helper()
		got := routes()
		sort.Strings(want)
		if len(got) != len(want) {
			t.Fatalf("routes %v, want %v", got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("routes %v, want %v", got, want)
			}
		}
	}
	in(func() error {
		return syncNodeRoutes([]nodeRoute{{Dst: mp("10.244.2.0/24"), Via: ma("192.0.2.2"), Node: "b"}, {Dst: mp("10.244.3.0/24"), Via: ma("192.0.2.3"), Node: "c"}})
	})
	check("10.99.0.0/16 via 192.0.2.99", "10.244.2.0/24 via 192.0.2.2", "10.244.3.0/24 via 192.0.2.3")
	// Node c moved, node b left.
	in(func() error {
		return syncNodeRoutes([]nodeRoute{{Dst: mp("10.244.3.0/24"), Via: ma("192.0.2.4"), Node: "c"}})
	})
	check("10.99.0.0/16 via 192.0.2.99", "10.244.3.0/24 via 192.0.2.4")
	in(func() error { return syncNodeRoutes(nil) })
	check("10.99.0.0/16 via 192.0.2.99")
	// An unreachable next hop is an error naming the node.
	err := netns.Do(path, func() error {
		return syncNodeRoutes([]nodeRoute{{Dst: mp("10.244.5.0/24"), Via: ma("198.51.100.1"), Node: "far"}})
	})
	if err == nil {
		t.Fatal("route via an address no link reaches: no error")
	}
	t.Log(err)
}
