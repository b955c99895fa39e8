package cni

import (
	"context"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// prevResult parses the result of the plugins before this one.
func (r *request) prevResult() (*current.Result, error) {
	if r.conf.PrevResult == nil {
		// ParsePrevResult moves RawPrevResult to PrevResult.
		if r.conf.RawPrevResult == nil {
			return nil, fmt.Errorf("bulwark-cni: chained mode needs a prevResult: list it after ptp or bridge in the network's plugins")
		}
		if err := version.ParsePrevResult(&r.conf.PluginConf); err != nil {
			return nil, fmt.Errorf("bulwark-cni: prevResult: %w", err)
		}
	}
	res, err := current.NewResultFromResult(r.conf.PrevResult)
	if err != nil {
		return nil, fmt.Errorf("bulwark-cni: prevResult: %w", err)
	}
	return res, nil
}

// chainedEndpoint finds what the primary plugin made for the pod
// interface: the pod link (by name in the pod's netns), its veth peer in
// this netns (by the peer's index, checked from both ends, so ptp and
// bridge both work whatever they named it) and the pod's addresses.
func (r *request) chainedEndpoint(res *current.Result) (podLink, hostLink netlink.Link, ips []*current.IPConfig, err error) {
	args := r.args
	podIdx := podInterface(res, args.IfName, args.Netns)
	ips = ipsOf(res, podIdx)
	if len(ips) == 0 {
		return nil, nil, nil, fmt.Errorf("bulwark-cni: prevResult has no address for %s", args.IfName)
	}
	var peer int
	err = ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
		var err error
		podLink, peer, err = ip.GetVethPeerIfindex(args.IfName)
		return err
	})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("bulwark-cni: pod interface %s in %s (chained mode supports veth-based primary plugins: ptp, bridge): %w", args.IfName, args.Netns, err)
	}
	hostLink, err = netlink.LinkByIndex(peer)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("bulwark-cni: host side (ifindex %d) of %s: %w", peer, args.IfName, err)
	}
	if _, ok := hostLink.(*netlink.Veth); !ok || hostLink.Attrs().ParentIndex != podLink.Attrs().Index {
		return nil, nil, nil, fmt.Errorf("bulwark-cni: link %s (ifindex %d) of this netns is not the peer of %s: did the primary plugin leave the host side in another netns?", hostLink.Attrs().Name, peer, args.IfName)
	}
	return podLink, hostLink, ips, nil
}

func (r *request) addChained(ctx context.Context) error {
	res, err := r.prevResult()
	if err != nil {
		return err
	}
	_, hostLink, ips, err := r.chainedEndpoint(res)
	if err != nil {
		return err
	}
	ep := r.endpoint()
	ep.HostIfName, ep.HostIfIndex, ep.IPs = hostLink.Attrs().Name, hostLink.Attrs().Index, resultIPs(ips)
	if _, err := r.addAgent(ctx, ep); err != nil {
		return err
	}
	// Unchanged: this plugin adds no interface, address or route.
	return types.PrintResult(r.conf.PrevResult, r.conf.CNIVersion)
}

func (r *request) delChained(ctx context.Context) error {
	ep := r.endpoint()
	// DEL runs before the primary plugin's: the link usually still exists
	// and tells the agent which one to release. Without it (netns gone, a
	// repeated DEL) the container ID and interface name identify it.
	if res, err := r.prevResult(); err == nil {
		if _, hostLink, ips, err := r.chainedEndpoint(res); err == nil {
			ep.HostIfName, ep.HostIfIndex, ep.IPs = hostLink.Attrs().Name, hostLink.Attrs().Index, resultIPs(ips)
		}
	}
	return r.delAgent(ctx, ep)
}

func (r *request) checkChained(ctx context.Context) error {
	res, err := r.prevResult()
	if err != nil {
		return err
	}
	podLink, hostLink, ips, err := r.chainedEndpoint(res)
	if err != nil {
		return err
	}
	if hostLink.Attrs().OperState != netlink.OperUp {
		return fmt.Errorf("bulwark-cni: host veth %s is %s, not up", hostLink.Attrs().Name, hostLink.Attrs().OperState)
	}
	err = ns.WithNetNSPath(r.args.Netns, func(ns.NetNS) error {
		if err := checkAddrs(podLink, ips); err != nil {
			return err
		}
		return ip.ValidateExpectedRoute(res.Routes)
	})
	if err != nil {
		return fmt.Errorf("bulwark-cni: CHECK %s in %s: %w", r.args.IfName, r.args.Netns, err)
	}
	ep := r.endpoint()
	ep.HostIfName, ep.HostIfIndex, ep.IPs = hostLink.Attrs().Name, hostLink.Attrs().Index, resultIPs(ips)
	if err := r.agent().WithTimeout(0).EndpointCheck(ctx, ep); err != nil {
		return fmt.Errorf("bulwark-cni: node agent: endpoint of %s/%s: %w", ep.PodNamespace, ep.PodName, err)
	}
	return nil
}
