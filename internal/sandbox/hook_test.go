package sandbox

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
)

// hookObservation is what the BeforeUp hook saw of one pod.
type hookObservation struct {
	pod  PodInfo
	errs []string // contract violations seen from inside the hook
}

// observeBeforeUp checks, from inside the hook, every promise of the
// BeforeUp contract: the node side exists but is down, the node has neither
// route nor neighbour for the pod, the pod side is configured, and no
// workload runs.
func observeBeforeUp(nodeNetnsPath string, p PodInfo) []string {
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	node, err := nsHandle(nodeNetnsPath)
	if err != nil {
		return []string{err.Error()}
	}
	defer node.Close()
	host, err := node.LinkByIndex(p.HostIfIndex)
	if err != nil {
		return []string{fmt.Sprintf("host link %d: %v", p.HostIfIndex, err)}
	}
	if host.Attrs().Name != p.HostIfName {
		bad("host link %d is %q, want %q", p.HostIfIndex, host.Attrs().Name, p.HostIfName)
	}
	if host.Attrs().Flags&net.FlagUp != 0 {
		bad("host link %s is administratively up", p.HostIfName)
	}
	if host.Attrs().HardwareAddr.String() != p.HostIfMAC {
		bad("host MAC %v, PodInfo says %s", host.Attrs().HardwareAddr, p.HostIfMAC)
	}
	routes, err := node.RouteList(host, netlink.FAMILY_ALL)
	if err != nil {
		bad("list node routes: %v", err)
	}
	for _, r := range routes {
		bad("node has a route through %s already: %v", p.HostIfName, r)
	}
	for _, a := range p.IPs {
		// Whatever the node would use to reach the pod, it is not the
		// pod's veth.
		if rs, err := node.RouteGet(net.IP(a.AsSlice())); err == nil {
			for _, r := range rs {
				if r.LinkIndex == p.HostIfIndex {
					bad("node routes %v through %s already", a, p.HostIfName)
				}
			}
		}
	}
	neighs, err := node.NeighList(p.HostIfIndex, netlink.FAMILY_ALL)
	if err != nil {
		bad("list node neighbours: %v", err)
	}
	for _, ne := range neighs {
		if ne.State&netlink.NUD_PERMANENT != 0 {
			bad("node has a neighbour entry on %s already: %v", p.HostIfName, ne.IP)
		}
	}
	if p.PID != 0 {
		bad("workload already started (pid %d)", p.PID)
	}
	inner, err := nsHandle(p.NetnsPath)
	if err != nil {
		return append(errs, err.Error())
	}
	defer inner.Close()
	eth0, err := inner.LinkByName("eth0")
	if err != nil {
		return append(errs, fmt.Sprintf("pod eth0: %v", err))
	}
	if eth0.Attrs().HardwareAddr.String() != p.PodIfMAC {
		bad("pod MAC %v, PodInfo says %s", eth0.Attrs().HardwareAddr, p.PodIfMAC)
	}
	// The pod side is up but has no carrier: its peer is down.
	if eth0.Attrs().OperState == netlink.OperUp {
		bad("pod eth0 is operationally up before the node side")
	}
	addrs, err := inner.AddrList(eth0, netlink.FAMILY_ALL)
	if err != nil {
		bad("list pod addresses: %v", err)
	}
	for _, a := range p.IPs {
		found := false
		for _, have := range addrs {
			if got, ok := netip.AddrFromSlice(have.IP); ok && got.Unmap() == a {
				found = true
			}
		}
		if !found {
			bad("pod address %v missing when the hook runs", a)
		}
	}
	return errs
}

// TestBeforeUpOrdering proves enforcement attached by the hook can see a
// pod's first packet: when BeforeUp runs the veth carries nothing (node
// side down, no node route or neighbour to the pod, no workload), and
// right after AddPod all of those exist.
func TestBeforeUpOrdering(t *testing.T) {
	t.Parallel()
	instance := uniqueInstance(t)
	nodePath := netns.Path(NodeNetns(instance))
	var mu sync.Mutex
	seen := map[string]hookObservation{}
	n := newTestNode(t, Options{Instance: instance, IPv6: true, BeforeUp: func(p PodInfo) error {
		errs := observeBeforeUp(nodePath, p)
		mu.Lock()
		seen[p.Key()] = hookObservation{pod: p, errs: errs}
		mu.Unlock()
		return nil
	}})
	p, err := n.AddPod(PodSpec{Namespace: "hook", Name: "web", Ports: []ContainerPort{{Name: "http", Port: 8080}}})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	dnsSpec := DNSPodSpec()
	for _, key := range []string{dnsSpec.Namespace + "/" + dnsSpec.Name, "hook/web"} { // the DNS pod goes through the hook too
		obs, ok := seen[key]
		if !ok {
			t.Errorf("BeforeUp never ran for %s", key)
			continue
		}
		for _, e := range obs.errs {
			t.Errorf("%s: %s", key, e)
		}
	}
	if obs := seen["hook/web"]; obs.pod.HostIfIndex != p.HostIfIndex || len(obs.pod.IPs) != 2 {
		t.Errorf("hook saw ifindex %d IPs %v; AddPod returned ifindex %d IPs %v", obs.pod.HostIfIndex, obs.pod.IPs, p.HostIfIndex, p.IPs)
	}

	// After AddPod: up, routed, neighbours in place, workload running.
	node, err := nsHandle(n.NodeNetnsPath())
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	host, err := node.LinkByIndex(p.HostIfIndex)
	if err != nil {
		t.Fatal(err)
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("%s still down after AddPod", p.HostIfName)
	}
	for _, a := range p.IPs {
		rs, err := node.RouteGet(net.IP(a.AsSlice()))
		if err != nil || len(rs) == 0 || rs[0].LinkIndex != p.HostIfIndex {
			t.Errorf("node route to %v after AddPod: %v %v", a, rs, err)
		}
	}
	if !p.Running() {
		t.Errorf("workload not running after AddPod")
	}
	out, code := execIn(t, n, "hook", "web", "wget", "--timeout=5", "-q", "-O-", "http://"+p.IPs[0].String()+":8080/self")
	if code != 0 || !strings.Contains(out, "pod=hook/web") {
		t.Errorf("pod serves after AddPod: exit %d %q", code, out)
	}
}

// TestBeforeUpErrorRemovesPod: a failing hook (enforcement could not be
// attached) leaves no pod, namespace, veth or address behind, and the
// link never came up.
func TestBeforeUpErrorRemovesPod(t *testing.T) {
	t.Parallel()
	instance := uniqueInstance(t)
	refuse := errors.New("enforcement unavailable")
	var mu sync.Mutex
	var failed PodInfo
	n := newTestNode(t, Options{Instance: instance, NoClusterDNS: true, BeforeUp: func(p PodInfo) error {
		if p.Name != "refused" {
			return nil
		}
		mu.Lock()
		failed = p
		mu.Unlock()
		return refuse
	}})
	_, err := n.AddPod(PodSpec{Namespace: "hook", Name: "refused"})
	if !errors.Is(err, refuse) {
		t.Fatalf("AddPod with a failing hook: %v, want %v", err, refuse)
	}
	if len(n.Pods()) != 0 {
		t.Errorf("pods after a refused AddPod: %v", n.Pods())
	}
	mu.Lock()
	f := failed
	mu.Unlock()
	if netns.Exists(f.Netns) {
		t.Errorf("netns %s left behind", f.Netns)
	}
	node, err := nsHandle(n.NodeNetnsPath())
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	if _, err := node.LinkByName(f.HostIfName); err == nil {
		t.Errorf("veth %s left behind", f.HostIfName)
	}
	// The address went back to the pool.
	for owner, ip := range n.pods.Owners() {
		if owner == f.Key() || ip == f.IPs[0] {
			t.Errorf("address %v still allocated to %s", ip, owner)
		}
	}
	// The hook is not stuck: the next pod is accepted.
	if _, err := n.AddPod(PodSpec{Namespace: "hook", Name: "accepted"}); err != nil {
		t.Fatal(err)
	}
}
