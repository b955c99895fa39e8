package tproxy

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/bulwark-net/bulwark/internal/datapath"
	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
)

const (
	// RouteTable holds the local default routes for packets marked for
	// the proxy (Cilium uses the same number).
	RouteTable = 2004
	// RulePriority places the rule before the main table (32766), after
	// the local table (0).
	RulePriority = 9
)

// EnsureRouting installs, in the namespace at nsPath ("" = the caller's),
// the rule and routes that deliver packets marked for the proxy locally.
// Idempotent: what exists is kept. ipv6 is false when the namespace has
// IPv6 turned off (only the IPv4 rule and route are installed).
func EnsureRouting(nsPath string) (ipv6 bool, err error) {
	h, close, err := handleAt(nsPath)
	if err != nil {
		return false, err
	}
	defer close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return false, fmt.Errorf("tproxy routing: find lo: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return false, fmt.Errorf("tproxy routing: set lo up: %w", err)
	}
	// A packet forwarded by the node towards a pod whose own hook
	// hairpins it to the proxy (local delivery off, or a source outside
	// the node) must not be early-demuxed to the proxy's socket on its
	// way in: the forward path drops packets that carry a socket. The
	// sysctl covers IPv6 too.
	//
	// A connection the proxy closes first leaves a TIME_WAIT socket under
	// the client's original tuple. A new SYN from the client reusing that
	// port would be looked up to it, and the kernel's TIME_WAIT handling
	// then looks for a listener on the original destination port (the
	// iptables TPROXY target redirects that case; bpf_sk_assign cannot):
	// the SYN would be lost. The node namespace keeps no TIME_WAIT sockets
	// (tcp_max_tw_buckets=0); its only TCP endpoints are the agent's
	// proxies, on a single machine where delayed duplicates do not occur.
	for key, value := range map[string]string{"net/ipv4/ip_early_demux": "0", "net/ipv4/tcp_max_tw_buckets": "0"} {
		if nsPath != "" {
			if err := netns.WriteSysctl(nsPath, key, value); err != nil {
				return false, fmt.Errorf("tproxy routing: %w", err)
			}
		} else if err := os.WriteFile("/proc/sys/"+key, []byte(value), 0o644); err != nil {
			return false, fmt.Errorf("tproxy routing: sysctl %s=%s: %w", key, value, err)
		}
	}
	ipv6 = true
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		if err := h.RuleAdd(proxyRule(fam)); err != nil && !errors.Is(err, os.ErrExist) && !errors.Is(err, unix.EEXIST) {
			return false, fmt.Errorf("tproxy routing: add %s rule: %w", famName(fam), err)
		}
		if err := h.RouteReplace(localRoute(fam, lo.Attrs().Index)); err != nil {
			if fam == unix.AF_INET6 && errors.Is(err, unix.EACCES) {
				// IPv6 is disabled in the namespace: no IPv6 packet
				// reaches a pod, none needs the route.
				h.RuleDel(proxyRule(fam))
				ipv6 = false
				continue
			}
			return false, fmt.Errorf("tproxy routing: add %s local route to table %d: %w", famName(fam), RouteTable, err)
		}
	}
	return ipv6, nil
}

// RemoveRouting removes what EnsureRouting installed in the namespace at
// nsPath; what is already gone is fine.
func RemoveRouting(nsPath string) error {
	h, close, err := handleAt(nsPath)
	if err != nil {
		return err
	}
	defer close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("tproxy routing: find lo: %w", err)
	}
	var errs []error
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		if err := h.RuleDel(proxyRule(fam)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("tproxy routing: delete %s rule: %w", famName(fam), err))
		}
		if err := h.RouteDel(localRoute(fam, lo.Attrs().Index)); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("tproxy routing: delete %s local route: %w", famName(fam), err))
		}
	}
	return errors.Join(errs...)
}

func proxyRule(fam int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = fam
	r.Priority = RulePriority
	r.Mark = datapath.ProxyMarkMagic
	mask := uint32(datapath.ProxyMarkMask)
	r.Mask = &mask
	r.Table = RouteTable
	return r
}

func localRoute(fam, lo int) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if fam == unix.AF_INET6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{Family: fam, Dst: dst, LinkIndex: lo, Table: RouteTable, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST}
}

func famName(fam int) string {
	if fam == unix.AF_INET6 {
		return "IPv6"
	}
	return "IPv4"
}

func handleAt(nsPath string) (*netlink.Handle, func(), error) {
	if nsPath == "" {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, nil, fmt.Errorf("tproxy routing: netlink: %w", err)
		}
		return h, func() { h.Close() }, nil
	}
	ns, err := vnetns.GetFromPath(nsPath)
	if err != nil {
		return nil, nil, fmt.Errorf("tproxy routing: open netns %s: %w", nsPath, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, nil, fmt.Errorf("tproxy routing: netlink in %s: %w", nsPath, err)
	}
	return h, func() { h.Close(); ns.Close() }, nil
}
