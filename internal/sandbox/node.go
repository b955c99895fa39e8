package sandbox

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bulwark-net/bulwark/internal/datapath/socklb"
	"github.com/bulwark-net/bulwark/internal/sandbox/cgroup"
	"github.com/bulwark-net/bulwark/internal/sandbox/ipam"
	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
)

// Node is an open sandbox instance. Its methods are safe for concurrent
// use. Everything it creates outlives the Node value (and the process):
// Close only releases handles; Teardown removes the instance.
type Node struct {
	opts Options

	mu    sync.Mutex
	st    *State
	lb    *socklb.LB
	pods  *ipam.Allocator
	svcs  *ipam.Allocator
	world *ipam.Allocator
	// IPv6 allocators; nil unless the instance was created with IPv6.
	pods6 *ipam.Allocator
	svcs6 *ipam.Allocator
}

// ipv6 reports whether the instance is dual stack.
func (n *Node) ipv6() bool { return n.st.PodCIDR6.IsValid() }

// New creates the instance, or reopens it as it was left (pods, services,
// processes and translation keep running across agent restarts).
func New(opts Options) (*Node, error) {
	if os.Geteuid() != 0 {
		return nil, errNotRoot
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	unlock, err := lockRoot(o.StateRoot)
	if err != nil {
		return nil, err
	}
	defer unlock()

	st, err := ReadState(o.StateRoot, o.Instance)
	if err != nil {
		if _, statErr := os.Stat(StateFile(o.StateRoot, o.Instance)); !errors.Is(statErr, os.ErrNotExist) {
			return nil, err
		}
		ranges, err := chooseRanges(o, otherStates(o.StateRoot, o.Instance))
		if err != nil {
			return nil, err
		}
		st = &ranges
		st.Version = StateVersion
		st.Instance = o.Instance
		st.ClusterDomain = o.ClusterDomain
	} else {
		for name, pair := range map[string][2]netip.Prefix{
			"PodCIDR": {o.PodCIDR, st.PodCIDR}, "ServiceCIDR": {o.ServiceCIDR, st.ServiceCIDR}, "WorldCIDR": {o.WorldCIDR, st.WorldCIDR},
		} {
			if pair[0].IsValid() && pair[0] != pair[1] {
				return nil, fmt.Errorf("instance %q exists with %s %v; tear it down to use %v", o.Instance, name, pair[1], pair[0])
			}
		}
		if o.IPv6 && !st.PodCIDR6.IsValid() {
			return nil, fmt.Errorf("instance %q exists without IPv6; tear it down to create it with IPv6", o.Instance)
		}
	}
	st.NodeIP = nthAddr(st.PodCIDR, 1)
	if st.PodCIDR6.IsValid() {
		st.NodeIP6 = nthAddr(st.PodCIDR6, 1)
	}
	st.Gateway = Gateway
	st.DNSServiceIP = nthAddr(st.ServiceCIDR, 10)
	st.NodeNetns = NodeNetns(o.Instance)
	st.BPFFSDir = filepath.Join(o.BPFFSRoot, o.Instance)
	mnt, err := cgroup.Mount()
	if err != nil {
		return nil, err
	}
	st.CgroupPath = filepath.Join(mnt, cgroupName(o.Instance))
	dir := StateDir(o.StateRoot, o.Instance)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	// Persist the ranges first so concurrent New calls see them.
	if err := writeState(o.StateRoot, st); err != nil {
		return nil, err
	}

	n := &Node{opts: o, st: st}
	if n.pods, err = ipam.Open(filepath.Join(dir, "ipam-pods.json"), st.PodCIDR, 2); err != nil {
		return nil, err
	}
	if n.svcs, err = ipam.Open(filepath.Join(dir, "ipam-services.json"), st.ServiceCIDR, 11); err != nil { // .0-.10 only by request: .10 is kube-dns
		return nil, err
	}
	if n.world, err = ipam.Open(filepath.Join(dir, "ipam-world.json"), st.WorldCIDR, 10); err != nil {
		return nil, err
	}
	if st.PodCIDR6.IsValid() {
		if n.pods6, err = ipam.Open(filepath.Join(dir, "ipam-pods6.json"), st.PodCIDR6, 2); err != nil {
			return nil, err
		}
		if n.svcs6, err = ipam.Open(filepath.Join(dir, "ipam-services6.json"), st.ServiceCIDR6, 11); err != nil {
			return nil, err
		}
	}
	if err := ensureBPFFS(); err != nil {
		return nil, err
	}
	if err := cgroup.Ensure(st.CgroupPath); err != nil {
		return nil, err
	}
	if err := n.ensureNodeNetns(); err != nil {
		return nil, err
	}
	if n.lb, err = socklb.Load(socklb.Options{CgroupPath: st.CgroupPath, PinDir: filepath.Join(st.BPFFSDir, "socklb")}); err != nil {
		return nil, err
	}
	if err := writeState(o.StateRoot, st); err != nil {
		return nil, err
	}
	if !o.NoClusterDNS {
		if _, err := n.ensureClusterDNS(); err != nil {
			n.Close()
			return nil, fmt.Errorf("cluster dns: %w", err)
		}
	}
	return n, nil
}

// ensureBPFFS mounts bpffs at /sys/fs/bpf if nothing is mounted there.
// It never unmounts.
func ensureBPFFS() error {
	var sfs unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &sfs); err == nil && sfs.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll("/sys/fs/bpf", 0o755); err != nil {
		return fmt.Errorf("create /sys/fs/bpf: %w", err)
	}
	if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount bpffs: %w", err)
	}
	return nil
}

// Close releases this process's handles. The instance keeps running.
func (n *Node) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.lb != nil {
		err := n.lb.Close()
		n.lb = nil
		return err
	}
	return nil
}

// Instance returns the instance name.
func (n *Node) Instance() string { return n.opts.Instance }

// State returns a copy of the instance state.
func (n *Node) State() State {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := *n.st
	c.Pods = append([]PodInfo(nil), n.st.Pods...)
	c.Services = append([]ServiceInfo(nil), n.st.Services...)
	c.World = append([]WorldHost(nil), n.st.World...)
	return c
}

// Pods returns every pod of the node.
func (n *Node) Pods() []PodInfo { return n.State().Pods }

// Services returns every programmed service.
func (n *Node) Services() []ServiceInfo { return n.State().Services }

// NodeNetnsPath is the node namespace path (the side where HostIfIndex
// interfaces live, for attaching datapath programs).
func (n *Node) NodeNetnsPath() string { return netns.Path(n.st.NodeNetns) }

func (n *Node) save() error { return writeState(n.opts.StateRoot, n.st) }

// ensureNodeNetns creates and configures the node namespace (idempotent).
func (n *Node) ensureNodeNetns() error {
	name := n.st.NodeNetns
	if !netns.Exists(name) {
		if err := netns.Create(name); err != nil {
			return err
		}
	}
	path := netns.Path(name)
	// Routing between sandbox ranges only: forwarding on, reverse-path
	// filtering off (pods sit behind /32 routes), IPv6 off unless the
	// instance is dual stack.
	if err := writeSysctls(path, n.nodeSysctls()); err != nil {
		return fmt.Errorf("node netns: %w", err)
	}
	h, err := nsHandle(path)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("node netns: find lo: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("node netns: lo up: %w", err)
	}
	for _, ip := range []netip.Addr{n.st.NodeIP, n.st.NodeIP6} {
		if !ip.IsValid() {
			continue
		}
		if err := h.AddrReplace(lo, &netlink.Addr{IPNet: hostPrefix(ip), Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("node netns: address %v: %w", ip, err)
		}
	}
	return nil
}

// sysctl is one /proc/sys key (with slashes) and its value; order matters
// (e.g. enabling IPv6 before configuring it).
type sysctl struct{ key, value string }

func writeSysctls(path string, s []sysctl) error {
	for _, kv := range s {
		if err := netns.WriteSysctl(path, kv.key, kv.value); err != nil {
			return err
		}
	}
	return nil
}

func (n *Node) nodeSysctls() []sysctl {
	s := []sysctl{
		{"net/ipv4/ip_forward", "1"},
		{"net/ipv4/conf/all/rp_filter", "0"},
		{"net/ipv4/conf/default/rp_filter", "0"},
	}
	if !n.ipv6() {
		return append(s, sysctl{"net/ipv6/conf/all/disable_ipv6", "1"}, sysctl{"net/ipv6/conf/default/disable_ipv6", "1"})
	}
	return append(append(s, ipv6Sysctls...), sysctl{"net/ipv6/conf/all/forwarding", "1"})
}

// ipv6Sysctls enable IPv6 quietly: no DAD (addresses usable at once), no
// router solicitations or autoconfiguration (nothing routes but us). They
// apply to interfaces created (or moved in) afterwards.
var ipv6Sysctls = []sysctl{
	{"net/ipv6/conf/all/disable_ipv6", "0"},
	{"net/ipv6/conf/default/disable_ipv6", "0"},
	{"net/ipv6/conf/default/accept_dad", "0"},
	{"net/ipv6/conf/default/accept_ra", "0"},
	{"net/ipv6/conf/default/router_solicitations", "0"},
}

// podSysctls prepare a pod (or world) namespace before its veth arrives.
func (n *Node) podSysctls() []sysctl {
	if n.ipv6() {
		return ipv6Sysctls
	}
	return []sysctl{{"net/ipv6/conf/default/disable_ipv6", "1"}, {"net/ipv6/conf/all/disable_ipv6", "1"}}
}

// nsHandle opens a netlink handle bound to the namespace at path.
func nsHandle(path string) (*netlink.Handle, error) {
	ns, err := netns.Handle(path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", path, err)
	}
	return h, nil
}

func hostPrefix(ip netip.Addr) *net.IPNet {
	bits := ip.BitLen()
	return &net.IPNet{IP: net.IP(ip.AsSlice()), Mask: net.CIDRMask(bits, bits)}
}

func prefixNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
