package network

import (
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
)

// The switch and two nodes: the host and both nodes reach the control
// plane address, the nodes reach each other, a pod CIDR route lands in
// the namespace asked for, and Delete leaves nothing.
func TestSwitchNodesDelete(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Skip("needs busybox (ping)")
	}
	b := make([]byte, 3)
	rand.Read(b)
	name := "n" + hex.EncodeToString(b)
	subnet, err := FreeSubnet(nil)
	if err != nil {
		t.Fatal(err)
	}
	nodes := []string{"node-1", "node-2"}
	t.Cleanup(func() {
		if err := Delete(name, nodes); err != nil {
			t.Error(err)
		}
		for _, n := range append([]string{CPNetns(name)}, NodeNetns(name, "node-1"), NodeNetns(name, "node-2")) {
			if netns.Exists(n) {
				t.Errorf("netns %s left", n)
			}
		}
		if _, err := os.Stat("/sys/class/net/" + HostIf(name)); err == nil {
			t.Errorf("link %s left", HostIf(name))
		}
	})
	if err := CreateSwitch(name, subnet); err != nil {
		t.Fatal(err)
	}
	for i, n := range nodes {
		if err := CreateNode(name, n, subnet, NodeIP(subnet, i+1)); err != nil {
			t.Fatal(err)
		}
	}
	ping := func(ns string, to netip.Addr) {
		t.Helper()
		args := []string{"busybox", "ping", "-c1", "-W2", to.String()}
		cmd := exec.Command(args[0], args[1:]...)
		if ns != "" {
			cmd = exec.Command("nsenter", append([]string{"--net=" + netns.Path(ns)}, args...)...)
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("ping %s from %q: %v\n%s", to, ns, err, out)
		}
	}
	ping("", CPIP(subnet))
	ping(NodeNetns(name, "node-1"), CPIP(subnet))
	ping(NodeNetns(name, "node-1"), NodeIP(subnet, 2))
	ping(NodeNetns(name, "node-2"), HostIP(subnet))
	cidr := netip.MustParsePrefix("10.244.7.0/24")
	if err := RoutePodCIDR(NodeNetns(name, "node-1"), cidr, NodeIP(subnet, 2)); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ip", "-n", NodeNetns(name, "node-1"), "route", "show", cidr.String()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "via "+NodeIP(subnet, 2).String()) {
		t.Errorf("route: %v %s", err, out)
	}
	if o, _ := exec.Command("ip", "route", "show", cidr.String()).CombinedOutput(); len(strings.TrimSpace(string(o))) > 0 {
		t.Errorf("host gained a pod CIDR route: %s", o)
	}
}
