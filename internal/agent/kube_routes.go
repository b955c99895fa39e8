package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routeProtocol marks the routes the agent installs (native routing), so
// that it replaces and removes only its own.
const routeProtocol netlink.RouteProtocol = 0xb7

// nodeRoute is one other node's pod CIDR and the address it is reached at.
type nodeRoute struct {
	Dst  netip.Prefix
	Via  netip.Addr
	Node string
}

// syncNodeRoutes makes the agent's routes in the calling goroutine's
// network namespace exactly routes: each other node's pod CIDR via that
// node's InternalIP (which must be directly reachable: a neighbour on a
// shared L2 segment, as with Cilium's auto-direct-node-routes).
func syncNodeRoutes(routes []nodeRoute) error {
	want := map[netip.Prefix]nodeRoute{}
	for _, r := range routes {
		want[r.Dst] = r
	}
	var errs []error
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		have, err := netlink.RouteListFiltered(fam, &netlink.Route{Protocol: routeProtocol, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("list routes: %w", err)
		}
		for _, h := range have {
			if h.Dst == nil {
				continue
			}
			dst, ok := netip.AddrFromSlice(h.Dst.IP)
			ones, _ := h.Dst.Mask.Size()
			if !ok {
				continue
			}
			p := netip.PrefixFrom(dst.Unmap(), ones)
			if w, ok := want[p]; ok && h.Gw != nil {
				if gw, ok := netip.AddrFromSlice(h.Gw); ok && gw.Unmap() == w.Via {
					delete(want, p) // already there
					continue
				}
			}
			if err := netlink.RouteDel(&h); err != nil {
				errs = append(errs, fmt.Errorf("delete route %s: %w", p, err))
			}
		}
	}
	for _, r := range want {
		dst := &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), r.Dst.Addr().BitLen())}
		rt := &netlink.Route{Dst: dst, Gw: r.Via.AsSlice(), Protocol: routeProtocol, Table: unix.RT_TABLE_MAIN}
		if err := netlink.RouteReplace(rt); err != nil {
			errs = append(errs, fmt.Errorf("route %s via %s (node %s): %w", r.Dst, r.Via, r.Node, err))
		}
	}
	return errors.Join(errs...)
}
