package cni

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bulwark-net/bulwark/internal/agentapi"
)

// The pod's gateways: link-local addresses that exist on no interface. A
// static neighbour in the pod resolves them to the host side's MAC, so every
// packet the pod routes goes to the host veth, where the datapath sees it.
var (
	gatewayV4 = net.IPv4(169, 254, 1, 1).To4()
	gatewayV6 = net.ParseIP("fe80::1")
)

// hostIfPrefix starts the name of every host-side veth the plugin creates.
const hostIfPrefix = "bwk"

// HostIfName is the name of the host side of the veth pair for the pod
// interface ifName of container containerID: "bwk" and 11 hex digits of a
// hash of both, so DEL finds it without any state.
func HostIfName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return hostIfPrefix + hex.EncodeToString(sum[:])[:11]
}

// hostIfAlias tags a host-side veth with its network and attachment, which
// GC reads to find the links of attachments the runtime no longer has.
func hostIfAlias(network, containerID, ifName string) string {
	return "bulwark-cni " + network + " " + containerID + " " + ifName
}

func gatewayFor(a net.IP) net.IP {
	if a.To4() != nil {
		return gatewayV4
	}
	return gatewayV6
}

func hostMask(a net.IP) net.IPMask {
	if a.To4() != nil {
		return net.CIDRMask(32, 32)
	}
	return net.CIDRMask(128, 128)
}

func (r *request) addStandalone(ctx context.Context) (err error) {
	args, conf := r.args, r.conf
	ipamRes, err := invoke.DelegateAdd(ctx, conf.IPAM.Type, args.StdinData, nil)
	if err != nil {
		return fmt.Errorf("bulwark-cni: IPAM plugin %s: %w", conf.IPAM.Type, err)
	}
	hostName := HostIfName(args.ContainerID, args.IfName)
	linkMade := false
	var attached *agentapi.CNIEndpointRequest
	defer func() {
		if err == nil {
			return
		}
		// Undo in reverse order, with a context of its own: the ADD's may
		// be the thing that expired.
		uctx, cancel := context.WithTimeout(context.Background(), delTimeout)
		defer cancel()
		if attached != nil {
			if derr := r.delAgent(uctx, *attached); derr != nil {
				err = fmt.Errorf("%w (and detaching it: %v)", err, derr)
			}
		}
		if linkMade {
			if derr := delHostLink(hostName); derr != nil {
				err = fmt.Errorf("%w (and undoing it: %v)", err, derr)
			}
		}
		if derr := invoke.DelegateDel(uctx, conf.IPAM.Type, args.StdinData, nil); derr != nil {
			err = fmt.Errorf("%w (and releasing its addresses: %v)", err, derr)
		}
	}()

	res, err := current.NewResultFromResult(ipamRes)
	if err != nil {
		return fmt.Errorf("bulwark-cni: IPAM plugin %s result: %w", conf.IPAM.Type, err)
	}
	if len(res.IPs) == 0 {
		return fmt.Errorf("bulwark-cni: IPAM plugin %s returned no address", conf.IPAM.Type)
	}
	if err := ip.EnableForward(res.IPs); err != nil {
		return fmt.Errorf("bulwark-cni: enable IP forwarding: %w", err)
	}
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return fmt.Errorf("bulwark-cni: open pod netns %q: %w", args.Netns, err)
	}
	defer podNS.Close()

	// A link of this name is left over from an ADD of this very
	// attachment that was interrupted: the name is derived from it.
	if err := delHostLink(hostName); err != nil {
		return err
	}
	var hostIf, podIf net.Interface
	err = podNS.Do(func(hostNS ns.NetNS) error {
		var err error
		hostIf, podIf, err = ip.SetupVethWithName(args.IfName, hostName, conf.MTU, "", hostNS)
		return err
	})
	if err != nil {
		return fmt.Errorf("bulwark-cni: create veth pair %s/%s: %w", hostName, args.IfName, err)
	}
	linkMade = true
	hostLink, err := netlinksafe.LinkByName(hostName)
	if err != nil {
		return fmt.Errorf("bulwark-cni: host veth %s: %w", hostName, err)
	}
	if err := netlink.LinkSetAlias(hostLink, hostIfAlias(conf.Name, args.ContainerID, args.IfName)); err != nil {
		return fmt.Errorf("bulwark-cni: tag host veth %s: %w", hostName, err)
	}

	// The result describes what the pod really has: /32 (/128) addresses
	// and routes via the link-local gateways.
	res.Interfaces = []*current.Interface{
		{Name: hostName, Mac: hostIf.HardwareAddr.String()},
		{Name: podIf.Name, Mac: podIf.HardwareAddr.String(), Sandbox: args.Netns},
	}
	families := map[bool]bool{}
	for _, ipc := range res.IPs {
		ipc.Address = net.IPNet{IP: ipc.Address.IP, Mask: hostMask(ipc.Address.IP)}
		ipc.Gateway = gatewayFor(ipc.Address.IP)
		ipc.Interface = current.Int(1)
		families[ipc.Address.IP.To4() != nil] = true
	}
	res.Routes = podRoutes(res.Routes, families)
	if dns := conf.DNS; dns.Nameservers != nil || dns.Search != nil || dns.Options != nil || dns.Domain != "" {
		res.DNS = dns
	}

	// The agent attaches the endpoint before the pod has an address or a
	// route: no IP packet crosses the veth without the datapath.
	ep := r.endpoint()
	ep.HostIfName, ep.HostIfIndex = hostName, hostLink.Attrs().Index
	ep.IPs = resultIPs(res.IPs)
	if _, err := r.addAgent(ctx, ep); err != nil {
		return err
	}
	attached = &ep

	if err := podNS.Do(func(ns.NetNS) error { return configurePod(args.IfName, hostIf.HardwareAddr, res) }); err != nil {
		return fmt.Errorf("bulwark-cni: configure %s in %s: %w", args.IfName, args.Netns, err)
	}
	if err := configureHost(hostLink, podIf.HardwareAddr, res.IPs); err != nil {
		return fmt.Errorf("bulwark-cni: configure host veth %s: %w", hostName, err)
	}
	return types.PrintResult(res, conf.CNIVersion)
}

// podRoutes are the IPAM plugin's routes, each via the link-local gateway
// of its family, plus a default route for each family the pod has an
// address of and no default route for.
func podRoutes(ipamRoutes []*types.Route, families map[bool]bool) []*types.Route {
	var out []*types.Route
	hasDefault := map[bool]bool{}
	for _, rt := range ipamRoutes {
		v4 := rt.Dst.IP.To4() != nil
		if !families[v4] {
			continue
		}
		if ones, _ := rt.Dst.Mask.Size(); ones == 0 {
			hasDefault[v4] = true
		}
		out = append(out, &types.Route{Dst: rt.Dst, GW: gatewayFor(rt.Dst.IP), MTU: rt.MTU, AdvMSS: rt.AdvMSS, Priority: rt.Priority})
	}
	for _, v4 := range []bool{true, false} {
		if !families[v4] || hasDefault[v4] {
			continue
		}
		if v4 {
			out = append(out, &types.Route{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: gatewayV4})
		} else {
			out = append(out, &types.Route{Dst: net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, GW: gatewayV6})
		}
	}
	return out
}

func resultIPs(ips []*current.IPConfig) []string {
	out := make([]string, 0, len(ips))
	for _, ipc := range ips {
		out = append(out, ipc.Address.String())
	}
	return out
}

// configurePod runs in the pod's netns: addresses, the gateways' static
// neighbours and the routes.
func configurePod(ifName string, hostMAC net.HardwareAddr, res *current.Result) error {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", ifName, err)
	}
	idx := link.Attrs().Index
	gateways := map[string]net.IP{}
	for _, ipc := range res.IPs {
		addr := &netlink.Addr{IPNet: &ipc.Address}
		if ipc.Address.IP.To4() == nil {
			// The address is the pod's alone (IPAM said so): skip
			// duplicate address detection, which would delay it.
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("add address %s: %w", ipc.Address.String(), err)
		}
		gateways[ipc.Gateway.String()] = ipc.Gateway
	}
	for _, gw := range gateways {
		family := netlink.FAMILY_V6
		if gw.To4() != nil {
			family = netlink.FAMILY_V4
			// The IPv4 gateway is outside every pod address's
			// prefix: make it reachable on the link.
			if err := netlink.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: &net.IPNet{IP: gw, Mask: hostMask(gw)}, Scope: netlink.SCOPE_LINK}); err != nil {
				return fmt.Errorf("add route to gateway %s: %w", gw, err)
			}
		}
		if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: family, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: hostMAC}); err != nil {
			return fmt.Errorf("add neighbour %s: %w", gw, err)
		}
	}
	for _, rt := range res.Routes {
		route := &netlink.Route{LinkIndex: idx, Dst: &rt.Dst, Gw: rt.GW, MTU: rt.MTU, AdvMSS: rt.AdvMSS, Priority: rt.Priority}
		if ones, _ := rt.Dst.Mask.Size(); ones == 0 {
			route.Dst = nil
		}
		if err := netlink.RouteAdd(route); err != nil {
			return fmt.Errorf("add route %s via %s: %w", rt.Dst.String(), rt.GW, err)
		}
	}
	return nil
}

// configureHost routes each pod address to the host veth, with a static
// neighbour so the node never has to resolve it.
func configureHost(link netlink.Link, podMAC net.HardwareAddr, ips []*current.IPConfig) error {
	idx := link.Attrs().Index
	for _, ipc := range ips {
		a := ipc.Address.IP
		family := netlink.FAMILY_V6
		if a.To4() != nil {
			family = netlink.FAMILY_V4
		}
		if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: family, State: netlink.NUD_PERMANENT, IP: a, HardwareAddr: podMAC}); err != nil {
			return fmt.Errorf("add neighbour %s: %w", a, err)
		}
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: &net.IPNet{IP: a, Mask: hostMask(a)}, Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("add route %s: %w", a, err)
		}
	}
	return nil
}

// delHostLink deletes a host veth (its pod side, routes and neighbours go
// with it); one that does not exist is not an error.
func delHostLink(name string) error {
	if err := ip.DelLinkByName(name); err != nil && !errors.Is(err, ip.ErrLinkNotFound) {
		return fmt.Errorf("bulwark-cni: delete host veth %s: %w", name, err)
	}
	return nil
}

func (r *request) delStandalone(ctx context.Context) error {
	args, conf := r.args, r.conf
	ep := r.endpoint()
	ep.HostIfName = HostIfName(args.ContainerID, args.IfName)
	if l, err := netlinksafe.LinkByName(ep.HostIfName); err == nil {
		ep.HostIfIndex = l.Attrs().Index
	}
	// The agent first, while the link still exists; then the link and the
	// addresses whatever it answered.
	agentErr := r.delAgent(ctx, ep)
	linkErr := delHostLink(ep.HostIfName)
	var ipamErr error
	if err := invoke.DelegateDel(ctx, conf.IPAM.Type, args.StdinData, nil); err != nil {
		ipamErr = fmt.Errorf("bulwark-cni: IPAM plugin %s: %w", conf.IPAM.Type, err)
	}
	return errors.Join(linkErr, ipamErr, agentErr)
}

func (r *request) checkStandalone(ctx context.Context) error {
	args, conf := r.args, r.conf
	res, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return fmt.Errorf("bulwark-cni: prevResult: %w", err)
	}
	podIdx := podInterface(res, args.IfName, args.Netns)
	if podIdx < 0 {
		return fmt.Errorf("bulwark-cni: prevResult has no interface %s in %s", args.IfName, args.Netns)
	}
	hostName := HostIfName(args.ContainerID, args.IfName)
	hostLink, err := netlinksafe.LinkByName(hostName)
	if err != nil {
		return fmt.Errorf("bulwark-cni: host veth %s of %s/%s: %w", hostName, args.ContainerID, args.IfName, err)
	}
	if _, ok := hostLink.(*netlink.Veth); !ok {
		return fmt.Errorf("bulwark-cni: host link %s is a %s, not a veth", hostName, hostLink.Type())
	}
	if hostLink.Attrs().OperState != netlink.OperUp {
		return fmt.Errorf("bulwark-cni: host veth %s is %s, not up", hostName, hostLink.Attrs().OperState)
	}
	ips := ipsOf(res, podIdx)
	err = ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
		podLink, err := checkPodLink(args.IfName, res.Interfaces[podIdx].Mac, hostLink)
		if err != nil {
			return err
		}
		if err := checkAddrs(podLink, ips); err != nil {
			return err
		}
		return ip.ValidateExpectedRoute(res.Routes)
	})
	if err != nil {
		return fmt.Errorf("bulwark-cni: CHECK %s in %s: %w", args.IfName, args.Netns, err)
	}
	for _, ipc := range ips {
		dst := &net.IPNet{IP: ipc.Address.IP, Mask: hostMask(ipc.Address.IP)}
		routes, err := netlinksafe.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: hostLink.Attrs().Index, Dst: dst}, netlink.RT_FILTER_OIF|netlink.RT_FILTER_DST)
		if err != nil {
			return fmt.Errorf("bulwark-cni: list routes of %s: %w", hostName, err)
		}
		if len(routes) == 0 {
			return fmt.Errorf("bulwark-cni: no route to %s via host veth %s", dst, hostName)
		}
	}
	if err := invoke.DelegateCheck(ctx, conf.IPAM.Type, args.StdinData, nil); err != nil {
		return fmt.Errorf("bulwark-cni: IPAM plugin %s: %w", conf.IPAM.Type, err)
	}
	ep := r.endpoint()
	ep.HostIfName, ep.HostIfIndex, ep.IPs = hostName, hostLink.Attrs().Index, resultIPs(ips)
	if err := r.agent().WithTimeout(0).EndpointCheck(ctx, ep); err != nil {
		return fmt.Errorf("bulwark-cni: node agent: endpoint of %s/%s: %w", ep.PodNamespace, ep.PodName, err)
	}
	return nil
}

// gcStandalone releases what attachments the runtime no longer has left
// behind: IPAM reservations (the IPAM plugin's GC) and host veths of this
// network, found by their alias.
func (r *request) gcStandalone(ctx context.Context) error {
	conf := r.conf
	var errs []error
	if err := invoke.DelegateGC(ctx, conf.IPAM.Type, r.args.StdinData, nil); err != nil {
		errs = append(errs, fmt.Errorf("bulwark-cni: IPAM plugin %s GC: %w", conf.IPAM.Type, err))
	}
	valid := map[string]bool{}
	for _, a := range conf.ValidAttachments {
		valid[hostIfAlias(conf.Name, a.ContainerID, a.IfName)] = true
	}
	links, err := netlinksafe.LinkList()
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("bulwark-cni: list links: %w", err))...)
	}
	ours := hostIfAlias(conf.Name, "", "")
	ours = ours[:len(ours)-1] // "bulwark-cni <network> "
	for _, l := range links {
		a := l.Attrs()
		if _, ok := l.(*netlink.Veth); !ok || !strings.HasPrefix(a.Name, hostIfPrefix) || !strings.HasPrefix(a.Alias, ours) || valid[a.Alias] {
			continue
		}
		if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("bulwark-cni: GC: delete stale host veth %s (%s): %w", a.Name, a.Alias, err))
		}
	}
	return errors.Join(errs...)
}

// podInterface is the index of the pod's interface in a result, -1 when
// the result has none.
func podInterface(res *current.Result, name, netns string) int {
	for i, intf := range res.Interfaces {
		if intf.Name == name && intf.Sandbox != "" && (netns == "" || intf.Sandbox == netns) {
			return i
		}
	}
	return -1
}

// ipsOf returns the addresses of interface idx of a result, with those
// that name no interface.
func ipsOf(res *current.Result, idx int) []*current.IPConfig {
	var out []*current.IPConfig
	for _, ipc := range res.IPs {
		if ipc.Interface == nil || *ipc.Interface == idx {
			out = append(out, ipc)
		}
	}
	return out
}

// checkPodLink runs in the pod's netns: ifName is a veth with the MAC of
// the result whose peer is hostLink.
func checkPodLink(ifName, mac string, hostLink netlink.Link) (netlink.Link, error) {
	link, peer, err := ip.GetVethPeerIfindex(ifName)
	if err != nil {
		return nil, err
	}
	if mac != "" && link.Attrs().HardwareAddr.String() != mac {
		return nil, fmt.Errorf("%s has MAC %s, the result says %s", ifName, link.Attrs().HardwareAddr, mac)
	}
	if peer != hostLink.Attrs().Index || hostLink.Attrs().ParentIndex != link.Attrs().Index {
		return nil, fmt.Errorf("%s is not the peer of host veth %s", ifName, hostLink.Attrs().Name)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		return nil, fmt.Errorf("%s is down", ifName)
	}
	return link, nil
}

// checkAddrs fails unless link has every address of ips, with its prefix
// length.
func checkAddrs(link netlink.Link, ips []*current.IPConfig) error {
	addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
	for _, ipc := range ips {
		found := false
		for _, a := range addrs {
			if a.IPNet.String() == ipc.Address.String() {
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("%s lacks address %s", link.Attrs().Name, ipc.Address.String())
		}
	}
	return nil
}
