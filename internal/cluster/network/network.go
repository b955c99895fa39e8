// Package network lays out a one-machine cluster's network: the control
// plane's namespace holds the cluster switch (a bridge), every node is a
// namespace of its own with a veth whose peer is a port of that bridge, and
// the host reaches the switch through one more veth (so kubectl on the host
// talks to the API server). Nodes route each other's pod CIDRs directly
// over the switch (native routing); the host's routing table only gains
// the switch's subnet.
//
//	host: bwc-NAME (.1) ─┐
//	cp netns: br0 (.2) ──┼── n-NODE ─── node netns: eth0 (.10+i)
//	                     └── ...
package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
)

// Names of interfaces.
const (
	Bridge   = "br0"
	NodeIf   = "eth0"
	HostPeer = "host"
)

// HostIf is the host side veth of cluster name.
func HostIf(cluster string) string { return "bwc-" + cluster }

// CPNetns and NodeNetns are the namespace names.
func CPNetns(cluster string) string              { return "bwc-" + cluster + "-cp" }
func NodeNetns(cluster, node string) string      { return "bwc-" + cluster + "-" + node }
func nodePort(node string) string                { return "n-" + node }
func addrIn(p netip.Prefix, host int) netip.Addr { return nthAddr(p.Masked().Addr(), host) }

func nthAddr(a netip.Addr, n int) netip.Addr {
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// HostIP, CPIP and NodeIP are the addresses on the switch's subnet.
func HostIP(subnet netip.Prefix) netip.Addr            { return addrIn(subnet, 1) }
func CPIP(subnet netip.Prefix) netip.Addr              { return addrIn(subnet, 2) }
func NodeIP(subnet netip.Prefix, index int) netip.Addr { return addrIn(subnet, 10+index) }

// FreeSubnet picks a /24 in 172.30.0.0/16 that overlaps no address or
// route of the host and none in taken.
func FreeSubnet(taken []netip.Prefix) (netip.Prefix, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("list host routes: %w", err)
	}
	var used []netip.Prefix
	used = append(used, taken...)
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		if p, err := netip.ParsePrefix(r.Dst.String()); err == nil && p.Bits() > 0 {
			used = append(used, p)
		}
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.IPNet.String()); err == nil {
				used = append(used, p.Masked())
			}
		}
	}
	for i := 0; i < 256; i++ {
		cand := netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 30, byte(i), 0}), 24)
		free := true
		for _, u := range used {
			if u.Overlaps(cand) {
				free = false
				break
			}
		}
		if free {
			return cand, nil
		}
	}
	return netip.Prefix{}, errors.New("no free /24 in 172.30.0.0/16 for the cluster network")
}

func ipnet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, 32)}
}

func handleAt(name string) (*netlink.Handle, func(), error) {
	h, err := netns.Handle(netns.Path(name))
	if err != nil {
		return nil, nil, err
	}
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		return nil, nil, fmt.Errorf("netlink in %s: %w", name, err)
	}
	return nh, func() { nh.Close(); h.Close() }, nil
}

func up(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// CreateSwitch creates the control plane namespace with the bridge (CP
// address) and the host veth (host address).
func CreateSwitch(cluster string, subnet netip.Prefix) error {
	cp := CPNetns(cluster)
	if err := netns.Create(cp); err != nil {
		return err
	}
	h, done, err := handleAt(cp)
	if err != nil {
		return err
	}
	defer done()
	if err := up(h, "lo"); err != nil {
		return err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: Bridge}}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("create bridge in %s: %w", cp, err)
	}
	brl, err := h.LinkByName(Bridge)
	if err != nil {
		return err
	}
	if err := h.AddrAdd(brl, &netlink.Addr{IPNet: ipnet(CPIP(subnet), subnet.Bits())}); err != nil {
		return fmt.Errorf("address bridge: %w", err)
	}
	if err := h.LinkSetUp(brl); err != nil {
		return err
	}
	// Bridged packets between nodes must not meet iptables in here.
	_ = netns.WriteSysctl(netns.Path(cp), "net/bridge/bridge-nf-call-iptables", "0")
	if err := netns.WriteSysctl(netns.Path(cp), "net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	// Host veth: created on the host, peer moved into the switch.
	hostIf := HostIf(cluster)
	if err := vethInto(cp, h, brl, hostIf, HostPeer, nil); err != nil {
		return err
	}
	hl, err := netlink.LinkByName(hostIf)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(hl, &netlink.Addr{IPNet: ipnet(HostIP(subnet), subnet.Bits())}); err != nil {
		return fmt.Errorf("address %s: %w", hostIf, err)
	}
	return netlink.LinkSetUp(hl)
}

// vethInto creates a veth pair: end a in the namespace of aNs (the host
// when nil), end b in the switch namespace cp (h is a handle there),
// attached to the bridge brl and up.
func vethInto(cp string, h *netlink.Handle, brl netlink.Link, a, b string, aNs *netlink.Handle) error {
	cph, err := netns.Handle(netns.Path(cp))
	if err != nil {
		return err
	}
	defer cph.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a}, PeerName: b, PeerNamespace: netlink.NsFd(int(cph))}
	var addErr error
	if aNs != nil {
		addErr = aNs.LinkAdd(veth)
	} else {
		addErr = netlink.LinkAdd(veth)
	}
	if addErr != nil {
		return fmt.Errorf("create veth %s/%s: %w", a, b, addErr)
	}
	pl, err := h.LinkByName(b)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", b, cp, err)
	}
	if err := h.LinkSetMaster(pl, brl); err != nil {
		return fmt.Errorf("attach %s to bridge: %w", b, err)
	}
	return h.LinkSetUp(pl)
}

// CreateNode creates a node's namespace with eth0 (the node IP) plugged
// into the switch, forwarding on.
func CreateNode(cluster, node string, subnet netip.Prefix, ip netip.Addr) error {
	name := NodeNetns(cluster, node)
	if err := netns.Create(name); err != nil {
		return err
	}
	nh, done, err := handleAt(name)
	if err != nil {
		return err
	}
	defer done()
	cph, cpdone, err := handleAt(CPNetns(cluster))
	if err != nil {
		return err
	}
	defer cpdone()
	brl, err := cph.LinkByName(Bridge)
	if err != nil {
		return err
	}
	if err := up(nh, "lo"); err != nil {
		return err
	}
	if err := vethInto(CPNetns(cluster), cph, brl, NodeIf, nodePort(node), nh); err != nil {
		return err
	}
	l, err := nh.LinkByName(NodeIf)
	if err != nil {
		return err
	}
	if err := nh.AddrAdd(l, &netlink.Addr{IPNet: ipnet(ip, subnet.Bits())}); err != nil {
		return fmt.Errorf("address %s in %s: %w", NodeIf, name, err)
	}
	if err := nh.LinkSetUp(l); err != nil {
		return err
	}
	for k, v := range map[string]string{"net/ipv4/ip_forward": "1", "net/ipv4/conf/all/rp_filter": "0"} {
		if err := netns.WriteSysctl(netns.Path(name), k, v); err != nil {
			return err
		}
	}
	return nil
}

// RoutePodCIDR routes cidr via gw (the node that owns it) in namespace ns.
func RoutePodCIDR(ns string, cidr netip.Prefix, gw netip.Addr) error {
	h, done, err := handleAt(ns)
	if err != nil {
		return err
	}
	defer done()
	r := &netlink.Route{Dst: ipnet(cidr.Masked().Addr(), cidr.Bits()), Gw: net.IP(gw.AsSlice())}
	if err := h.RouteReplace(r); err != nil {
		return fmt.Errorf("route %s via %s in %s: %w", cidr, gw, ns, err)
	}
	return nil
}

// Delete removes the cluster's namespaces (their veths go with them) and
// the host veth. Missing pieces are not errors.
func Delete(cluster string, nodes []string) error {
	var errs []error
	if l, err := netlink.LinkByName(HostIf(cluster)); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", HostIf(cluster), err))
		}
	}
	for _, n := range nodes {
		if err := netns.Delete(NodeNetns(cluster, n)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := netns.Delete(CPNetns(cluster)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
