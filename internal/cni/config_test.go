package cni

import (
	"encoding/json"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func TestConfListStandalone(t *testing.T) {
	b, err := ConfList(ConfOptions{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}, MTU: 1450})
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "cniVersion": "1.1.0",
  "name": "bulwark",
  "plugins": [
    {
      "agentSocket": "/run/bulwark/k8s/agent.sock",
      "ipam": {
        "dataDir": "/var/lib/bulwark/cni/ipam",
        "ranges": [
          [
            {
              "subnet": "10.244.1.0/24"
            }
          ],
          [
            {
              "subnet": "fd00:10:244:1::/64"
            }
          ]
        ],
        "routes": [
          {
            "dst": "0.0.0.0/0"
          },
          {
            "dst": "::/0"
          }
        ],
        "type": "host-local"
      },
      "mode": "standalone",
      "mtu": 1450,
      "type": "bulwark-cni"
    }
  ]
}`
	if string(b) != want {
		t.Fatalf("ConfList:\n%s\nwant\n%s", b, want)
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatalf("libcni rejects it: %v", err)
	}
	conf, err := parseConf(list.Plugins[0].Bytes)
	if err != nil {
		t.Fatalf("the plugin rejects it: %v", err)
	}
	if conf.Mode != ModeStandalone || conf.MTU != 1450 || conf.IPAM.Type != "host-local" || conf.AgentSocket != DefaultAgentSocket {
		t.Fatalf("the plugin reads %+v", conf)
	}
}

func TestConfListChained(t *testing.T) {
	b, err := ConfList(ConfOptions{Name: "k8s-pods", Mode: ModeChained, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}, AgentSocket: "/run/bulwark/x/agent.sock", IPAMDataDir: "/tmp/ipam"})
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatalf("libcni rejects it: %v\n%s", err, b)
	}
	if list.Name != "k8s-pods" || list.CNIVersion != "1.1.0" || len(list.Plugins) != 2 || list.Plugins[0].Network.Type != "ptp" || list.Plugins[1].Network.Type != PluginType {
		t.Fatalf("chained conflist: %s", b)
	}
	var ptp struct {
		IPMasq bool `json:"ipMasq"`
		IPAM   struct {
			DataDir string `json:"dataDir"`
		} `json:"ipam"`
	}
	if err := json.Unmarshal(list.Plugins[0].Bytes, &ptp); err != nil || ptp.IPMasq || ptp.IPAM.DataDir != "/tmp/ipam" {
		t.Fatalf("ptp entry %s: %v", list.Plugins[0].Bytes, err)
	}
	conf, err := parseConf(list.Plugins[1].Bytes)
	if err != nil {
		t.Fatalf("the plugin rejects it: %v", err)
	}
	if conf.Mode != ModeChained || conf.AgentSocket != "/run/bulwark/x/agent.sock" || conf.IPAM.Type != "" {
		t.Fatalf("the plugin reads %+v", conf)
	}
}

func TestConfListErrors(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		name string
		opts ConfOptions
		want string
	}{
		{"no CIDR", ConfOptions{}, "no pod CIDR"},
		{"host bits", ConfOptions{PodCIDRs: []netip.Prefix{p("10.0.0.1/24")}}, "host bits"},
		{"tiny", ConfOptions{PodCIDRs: []netip.Prefix{p("10.0.0.0/31")}}, "too small"},
		{"two v4", ConfOptions{PodCIDRs: []netip.Prefix{p("10.0.0.0/24"), p("10.0.1.0/24")}}, "one per address family"},
		{"mode", ConfOptions{Mode: "overlay", PodCIDRs: []netip.Prefix{p("10.0.0.0/24")}}, `mode "overlay"`},
		{"socket", ConfOptions{AgentSocket: "agent.sock", PodCIDRs: []netip.Prefix{p("10.0.0.0/24")}}, `"agentSocket"`},
		{"mtu", ConfOptions{MTU: 70000, PodCIDRs: []netip.Prefix{p("10.0.0.0/24")}}, `"mtu"`},
	} {
		if _, err := ConfList(tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

func TestParseConfErrors(t *testing.T) {
	for _, tc := range []struct{ conf, want string }{
		{`{"name":"n","type":"bulwark-cni","agentSocket":"/s"}`, `network n: field "ipam"`},
		{`{"name":"n","type":"bulwark-cni","mode":"chained","agentSocket":"/s","ipam":{"type":"host-local"}}`, `field "ipam": chained`},
		{`{"name":"n","type":"bulwark-cni","mode":"chained"}`, `field "agentSocket": missing`},
		{`{"name":"n","type":"bulwark-cni","mode":"bridge","agentSocket":"/s"}`, `field "mode"`},
		{`{"name":"n","type":"bulwark-cni","mode":"chained","agentSocket":"/s","mtu":-1}`, `field "mtu"`},
		{`{"name":"n",`, `decode network configuration`},
	} {
		if _, err := parseConf([]byte(tc.conf)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.conf, err, tc.want)
		}
	}
}

func TestHostIfName(t *testing.T) {
	a := HostIfName("0123456789abcdef", "eth0")
	if a != HostIfName("0123456789abcdef", "eth0") {
		t.Fatal("not deterministic")
	}
	if len(a) != 14 || !strings.HasPrefix(a, "bwk") {
		t.Fatalf("%q: want bwk and 11 hex digits (a kernel name has at most 15 bytes)", a)
	}
	if a == HostIfName("0123456789abcdef", "net1") || a == HostIfName("0123456789abcdee", "eth0") {
		t.Fatal("two attachments share a host veth name")
	}
}

func TestPodRoutes(t *testing.T) {
	_, dflt4, _ := net.ParseCIDR("0.0.0.0/0")
	_, svc, _ := net.ParseCIDR("10.96.0.0/12")
	_, v6, _ := net.ParseCIDR("fd00::/8")
	got := podRoutes([]*types.Route{{Dst: *svc, GW: net.ParseIP("10.244.1.1")}, {Dst: *v6}}, map[bool]bool{true: true})
	// The IPv4 route goes via the link-local gateway, the IPv6 one is
	// dropped (no IPv6 address), and a default route is added.
	var s []string
	for _, r := range got {
		s = append(s, r.Dst.String()+" via "+r.GW.String())
	}
	if strings.Join(s, ", ") != "10.96.0.0/12 via 169.254.1.1, 0.0.0.0/0 via 169.254.1.1" {
		t.Fatalf("routes: %v", s)
	}
	got = podRoutes([]*types.Route{{Dst: *dflt4}}, map[bool]bool{true: true, false: true})
	s = nil
	for _, r := range got {
		s = append(s, r.Dst.String()+" via "+r.GW.String())
	}
	if strings.Join(s, ", ") != "0.0.0.0/0 via 169.254.1.1, ::/0 via fe80::1" {
		t.Fatalf("routes: %v", s)
	}
}
