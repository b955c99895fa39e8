package sandbox

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bulwark-net/bulwark/internal/sandbox/dns"
	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
	"github.com/bulwark-net/bulwark/internal/sandbox/workload"
)

var dnsLabelRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
var dnsSubdomainRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)

func validatePodSpec(s *PodSpec) error {
	obj := "pod " + s.Namespace + "/" + s.Name
	if !dnsLabelRE.MatchString(s.Namespace) {
		return fmt.Errorf("%s: metadata.namespace %q is not a DNS label", obj, s.Namespace)
	}
	if !dnsSubdomainRE.MatchString(s.Name) {
		return fmt.Errorf("%s: metadata.name %q is not a DNS subdomain", obj, s.Name)
	}
	switch s.Role {
	case "":
		s.Role = RoleWorkload
	case RoleWorkload, RoleDNS:
	default:
		return fmt.Errorf("%s: unknown role %q", obj, s.Role)
	}
	seen := map[string]bool{}
	for i := range s.Ports {
		p := &s.Ports[i]
		field := fmt.Sprintf("%s: ports[%d]", obj, i)
		if p.Protocol == "" {
			p.Protocol = "TCP"
		}
		if p.Protocol != "TCP" && p.Protocol != "UDP" {
			return fmt.Errorf("%s.protocol %q: the sandbox serves TCP and UDP only", field, p.Protocol)
		}
		if p.Port < 1 || p.Port > 65535 {
			return fmt.Errorf("%s.containerPort %d: must be 1-65535", field, p.Port)
		}
		k := fmt.Sprintf("%s/%d", p.Protocol, p.Port)
		if seen[k] {
			return fmt.Errorf("%s: %s declared twice", field, k)
		}
		seen[k] = true
		if p.Kind == "" {
			p.Kind = PortKindFor(*p)
		}
		if (p.Kind == PortUDP) != (p.Protocol == "UDP") {
			return fmt.Errorf("%s: kind %q does not fit protocol %s", field, p.Kind, p.Protocol)
		}
	}
	return nil
}

// AddPod creates the pod's namespace, veth, addresses, routes and workload
// process, or brings an existing pod in line with spec (labels updated,
// workload restarted if its ports changed or it died). It returns when the
// workload listens on every port.
func (n *Node) AddPod(spec PodSpec) (PodInfo, error) {
	if err := validatePodSpec(&spec); err != nil {
		return PodInfo{}, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.addPodLocked(spec)
}

func (n *Node) findPod(namespace, name string) int {
	for i, p := range n.st.Pods {
		if p.Namespace == namespace && p.Name == name {
			return i
		}
	}
	return -1
}

func (n *Node) addPodLocked(spec PodSpec) (PodInfo, error) {
	if i := n.findPod(spec.Namespace, spec.Name); i >= 0 {
		p := &n.st.Pods[i]
		if netns.Exists(p.Netns) {
			restart := !p.Running() || !slices.Equal(p.Ports, spec.Ports) || p.Role != spec.Role
			if !restart && maps.Equal(p.Labels, spec.Labels) && p.OwnerDeployment == spec.OwnerDeployment {
				return *p, nil // already as asked: nothing to rewrite
			}
			p.Labels, p.OwnerDeployment = spec.Labels, spec.OwnerDeployment
			p.Ports, p.Role = spec.Ports, spec.Role
			if restart {
				if err := killProcess(p.PID, p.PIDStartTime); err != nil {
					return PodInfo{}, err
				}
				if err := n.startPodWorkload(p); err != nil {
					p.PID, p.PIDStartTime = 0, 0
					n.save()
					return PodInfo{}, err
				}
			}
			if err := n.save(); err != nil {
				return PodInfo{}, err
			}
			if err := n.reprogramServices(); err != nil {
				return PodInfo{}, err
			}
			return *p, nil
		}
		// The namespace vanished: rebuild the pod from scratch.
		n.removePodLocked(i)
	}

	p := PodInfo{
		Namespace:       spec.Namespace,
		Name:            spec.Name,
		Labels:          spec.Labels,
		OwnerDeployment: spec.OwnerDeployment,
		Role:            spec.Role,
		Ports:           spec.Ports,
		Netns:           PodNetns(n.opts.Instance, spec.Namespace, spec.Name),
		HostIfName:      HostIfName(n.opts.Instance, spec.Namespace, spec.Name),
		Created:         time.Now().UTC(),
	}
	p.NetnsPath = netns.Path(p.Netns)
	ip, err := n.pods.Allocate(p.Key())
	if err != nil {
		return PodInfo{}, fmt.Errorf("pod %s: allocate address: %w", p.Key(), err)
	}
	p.IPs = []netip.Addr{ip}
	fail := func(err error) (PodInfo, error) {
		n.destroyPodNetwork(p)
		n.pods.Release(p.Key())
		if n.pods6 != nil {
			n.pods6.Release(p.Key())
		}
		return PodInfo{}, fmt.Errorf("pod %s: %w", p.Key(), err)
	}
	routes := []netip.Prefix{n.st.PodCIDR, n.st.ServiceCIDR, n.st.WorldCIDR}
	if n.pods6 != nil {
		ip6, err := n.pods6.Allocate(p.Key())
		if err != nil {
			return fail(fmt.Errorf("allocate IPv6 address: %w", err))
		}
		p.IPs = append(p.IPs, ip6)
		routes = append(routes, n.st.PodCIDR6, n.st.ServiceCIDR6)
	}
	if netns.Exists(p.Netns) { // leftover of a crash between create and save
		n.destroyPodNetwork(p)
	}
	if err := netns.Create(p.Netns); err != nil {
		return fail(err)
	}
	l, err := n.plumb(plumbOptions{netnsPath: p.NetnsPath, hostIf: p.HostIfName, addrs: p.IPs, routes: routes})
	if err != nil {
		return fail(err)
	}
	p.HostIfIndex, p.HostIfMAC, p.PodIfMAC = l.hostIndex, l.hostMAC, l.peerMAC
	podDir := filepath.Join(StateDir(n.opts.StateRoot, n.opts.Instance), "pods", p.Namespace+"_"+p.Name)
	if err := os.MkdirAll(podDir, 0o755); err != nil {
		return fail(fmt.Errorf("create pod dir: %w", err))
	}
	p.ResolvConf = filepath.Join(podDir, "resolv.conf")
	if err := os.WriteFile(p.ResolvConf, []byte(dns.ResolvConf(n.st.DNSServiceIP, p.Namespace, n.st.ClusterDomain)), 0o644); err != nil {
		return fail(fmt.Errorf("write resolv.conf: %w", err))
	}
	// The node side is still down and the node has no route to the pod:
	// no packet can cross the veth yet, so enforcement attached here
	// sees the endpoint's first packet.
	if n.opts.BeforeUp != nil {
		if err := n.opts.BeforeUp(p); err != nil {
			return fail(fmt.Errorf("before up: %w", err))
		}
	}
	if err := n.linkUp(l); err != nil {
		return fail(err)
	}
	for _, a := range p.IPs {
		if err := n.nodeRoute(l, netip.PrefixFrom(a, a.BitLen()), a); err != nil {
			return fail(err)
		}
	}
	if err := n.startPodWorkload(&p); err != nil {
		return fail(err)
	}
	n.st.Pods = append(n.st.Pods, p)
	if err := n.save(); err != nil {
		return PodInfo{}, err
	}
	if err := n.reprogramServices(); err != nil {
		return PodInfo{}, err
	}
	return p, nil
}

func (n *Node) startPodWorkload(p *PodInfo) error {
	cfg := workload.Config{Pod: p.Key()}
	if p.Role == RoleDNS {
		cfg.DNSRecords = n.dnsRecordsFile()
		cfg.DNSPort = 53
	} else {
		for _, port := range p.Ports {
			switch port.Kind {
			case PortHTTP:
				cfg.HTTPPorts = append(cfg.HTTPPorts, port.Port)
			case PortTCP:
				cfg.TCPPorts = append(cfg.TCPPorts, port.Port)
			case PortUDP:
				cfg.UDPPorts = append(cfg.UDPPorts, port.Port)
			}
		}
	}
	pid, start, err := startWorkload(startOptions{
		exe: n.opts.Executable, netnsPath: p.NetnsPath, cgroup: n.st.CgroupPath,
		logFile: filepath.Join(StateDir(n.opts.StateRoot, n.opts.Instance), "logs", p.Namespace+"_"+p.Name+".log"),
		cfg:     cfg,
	})
	if err != nil {
		return err
	}
	p.PID, p.PIDStartTime = pid, start
	return nil
}

// RemovePod kills the pod's workload and removes its namespace, veth,
// routes and address. Removing a missing pod is not an error.
func (n *Node) RemovePod(namespace, name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	i := n.findPod(namespace, name)
	if i < 0 {
		return nil
	}
	if err := n.removePodLocked(i); err != nil {
		return err
	}
	if err := n.save(); err != nil {
		return err
	}
	return n.reprogramServices()
}

func (n *Node) removePodLocked(i int) error {
	p := n.st.Pods[i]
	if err := killProcess(p.PID, p.PIDStartTime); err != nil {
		return fmt.Errorf("pod %s: %w", p.Key(), err)
	}
	if err := n.destroyPodNetwork(p); err != nil {
		return fmt.Errorf("pod %s: %w", p.Key(), err)
	}
	if err := n.pods.Release(p.Key()); err != nil {
		return fmt.Errorf("pod %s: %w", p.Key(), err)
	}
	if n.pods6 != nil {
		if err := n.pods6.Release(p.Key()); err != nil {
			return fmt.Errorf("pod %s: %w", p.Key(), err)
		}
	}
	if p.ResolvConf != "" {
		os.RemoveAll(filepath.Dir(p.ResolvConf))
	}
	n.st.Pods = append(n.st.Pods[:i], n.st.Pods[i+1:]...)
	return nil
}

// destroyPodNetwork deletes the node-side veth (its peer goes with it, and
// with them the /32 route and neighbour entry) and the pod namespace.
func (n *Node) destroyPodNetwork(p PodInfo) error {
	if h, err := nsHandle(n.NodeNetnsPath()); err == nil {
		if l, err := h.LinkByName(p.HostIfName); err == nil {
			if err := h.LinkDel(l); err != nil {
				h.Close()
				return fmt.Errorf("delete %s: %w", p.HostIfName, err)
			}
		}
		h.Close()
	}
	return netns.Delete(p.Netns)
}

// plumbOptions describe one veth between the node and a namespace.
type plumbOptions struct {
	netnsPath string
	hostIf    string
	addrs     []netip.Addr   // /32 addresses on the namespace's eth0
	routes    []netip.Prefix // reachable through the gateway
}

type plumbed struct {
	hostIndex        int
	hostMAC, peerMAC string
	host             netlink.Link
}

// plumb creates hostIf (node side) ↔ eth0 (namespace side) and configures
// the namespace: loopback and eth0 up, addresses as /32, a permanent
// neighbour for the gateway, routes to the given prefixes via the gateway,
// and nothing else (no default route).
//
// Invariant: plumb leaves the node side administratively down, so the
// veth has no carrier and carries no packet in either direction, and adds
// nothing to the node namespace's routes or neighbours. The caller brings
// it up with linkUp (after attaching whatever must see the first packet),
// then routes to it with nodeRoute (the kernel refuses routes through a
// down link).
func (n *Node) plumb(o plumbOptions) (*plumbed, error) {
	if err := writeSysctls(o.netnsPath, n.podSysctls()); err != nil {
		return nil, err
	}
	node, err := nsHandle(n.NodeNetnsPath())
	if err != nil {
		return nil, err
	}
	defer node.Close()
	target, err := netns.Handle(o.netnsPath)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	inner, err := nsHandle(o.netnsPath)
	if err != nil {
		return nil, err
	}
	defer inner.Close()

	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: o.hostIf, MTU: 1500},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(target)),
	}
	if err := node.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("create veth %s: %w", o.hostIf, err)
	}
	host, err := node.LinkByName(o.hostIf)
	if err != nil {
		return nil, fmt.Errorf("find %s: %w", o.hostIf, err)
	}
	peer, err := inner.LinkByName("eth0")
	if err != nil {
		return nil, fmt.Errorf("find eth0: %w", err)
	}
	lo, err := inner.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo: %w", err)
	}
	for _, l := range []netlink.Link{lo, peer} {
		if err := inner.LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("set %s up: %w", l.Attrs().Name, err)
		}
	}
	src := map[bool]netip.Addr{} // per family (true: IPv4): the first address
	for _, a := range o.addrs {
		if !src[a.Is4()].IsValid() {
			src[a.Is4()] = a
		}
		if err := inner.AddrAdd(peer, &netlink.Addr{IPNet: hostPrefix(a), Flags: unix.IFA_F_NODAD}); err != nil {
			return nil, fmt.Errorf("add address %v: %w", a, err)
		}
	}
	hostMAC := host.Attrs().HardwareAddr
	for is4, gw := range map[bool]netip.Addr{true: Gateway, false: Gateway6} {
		if !src[is4].IsValid() {
			continue
		}
		family := unix.AF_INET6
		if is4 {
			family = unix.AF_INET
		}
		if err := inner.NeighSet(&netlink.Neigh{
			LinkIndex: peer.Attrs().Index, Family: family, State: netlink.NUD_PERMANENT,
			IP: net.IP(gw.AsSlice()), HardwareAddr: hostMAC,
		}); err != nil {
			return nil, fmt.Errorf("gateway neighbour %v: %w", gw, err)
		}
		if is4 { // IPv6 link-local gateways are on-link by definition
			if err := inner.RouteAdd(&netlink.Route{
				LinkIndex: peer.Attrs().Index, Scope: netlink.SCOPE_LINK, Dst: hostPrefix(gw),
			}); err != nil {
				return nil, fmt.Errorf("gateway route: %w", err)
			}
		}
	}
	for _, r := range o.routes {
		is4 := r.Addr().Is4()
		if !src[is4].IsValid() {
			continue
		}
		gw := Gateway
		if !is4 {
			gw = Gateway6
		}
		if err := inner.RouteAdd(&netlink.Route{
			LinkIndex: peer.Attrs().Index, Dst: prefixNet(r), Gw: net.IP(gw.AsSlice()),
			Src: net.IP(src[is4].AsSlice()),
		}); err != nil {
			return nil, fmt.Errorf("route %v: %w", r, err)
		}
	}
	return &plumbed{hostIndex: host.Attrs().Index, hostMAC: hostMAC.String(), peerMAC: peer.Attrs().HardwareAddr.String(), host: host}, nil
}

// linkUp brings the node side of a plumbed veth up: from here on packets
// cross it.
func (n *Node) linkUp(l *plumbed) error {
	node, err := nsHandle(n.NodeNetnsPath())
	if err != nil {
		return err
	}
	defer node.Close()
	if err := node.LinkSetUp(l.host); err != nil {
		return fmt.Errorf("set %s up: %w", l.host.Attrs().Name, err)
	}
	return nil
}

// nodeRoute routes dst in the node namespace to the plumbed namespace
// through next hop via (one of its addresses), resolved by a permanent
// neighbour entry.
func (n *Node) nodeRoute(l *plumbed, dst netip.Prefix, via netip.Addr) error {
	node, err := nsHandle(n.NodeNetnsPath())
	if err != nil {
		return err
	}
	defer node.Close()
	mac, err := net.ParseMAC(l.peerMAC)
	if err != nil {
		return fmt.Errorf("parse %s: %w", l.peerMAC, err)
	}
	family, nodeIP := unix.AF_INET, n.st.NodeIP
	if via.Is6() {
		family, nodeIP = unix.AF_INET6, n.st.NodeIP6
	}
	if err := node.NeighSet(&netlink.Neigh{
		LinkIndex: l.hostIndex, Family: family, State: netlink.NUD_PERMANENT,
		IP: net.IP(via.AsSlice()), HardwareAddr: mac,
	}); err != nil {
		return fmt.Errorf("node neighbour %v: %w", via, err)
	}
	r := &netlink.Route{LinkIndex: l.hostIndex, Dst: prefixNet(dst), Src: net.IP(nodeIP.AsSlice())}
	if dst.Bits() == dst.Addr().BitLen() && dst.Addr() == via {
		r.Scope = netlink.SCOPE_LINK
	} else {
		r.Gw = net.IP(via.AsSlice())
		r.Flags = int(netlink.FLAG_ONLINK)
	}
	if err := node.RouteReplace(r); err != nil {
		return fmt.Errorf("node route %v: %w", dst, err)
	}
	return nil
}

// sortedPods returns the pods ordered by key.
func sortedPods(pods []PodInfo) []PodInfo {
	out := append([]PodInfo(nil), pods...)
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}
