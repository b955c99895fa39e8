package cni

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
)

// These tests drive the real plugin binary through libcni, as a container
// runtime does, with the real host-local and ptp plugins, in network
// namespaces they create: "node" (where the runtime and the plugin run) and
// "pod". The agent is a peer double serving the real agentapi socket.

var bins struct {
	once sync.Once
	dir  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bins.dir != "" {
		os.RemoveAll(bins.dir)
	}
	os.Exit(code)
}

// pluginDir builds bulwark-cni and takes ptp and host-local from the
// Kubernetes binaries' cache (scripts/kube-binaries.sh), or builds them from
// the module proxy at the version in go.mod.
func pluginDir(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and veth pairs")
	}
	bins.once.Do(func() { bins.dir, bins.err = buildPlugins() })
	if bins.err != nil {
		t.Fatal(bins.err)
	}
	return bins.dir
}

func buildPlugins() (string, error) {
	dir, err := os.MkdirTemp("", "bulwark-cni-bin-")
	if err != nil {
		return "", err
	}
	build := exec.Command("go", "build", "-o", filepath.Join(dir, PluginType), "github.com/bulwark-net/bulwark/cmd/bulwark-cni")
	if out, err := build.CombinedOutput(); err != nil {
		return dir, fmt.Errorf("build bulwark-cni: %v\n%s", err, out)
	}
	cache := os.Getenv("BULWARK_KUBE_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache/bulwark/kube/v1.37.2")
	}
	var missing []string
	for _, p := range []struct{ name, pkg string }{{"ptp", "main/ptp"}, {"host-local", "ipam/host-local"}} {
		cached := filepath.Join(cache, "bin/cni", p.name)
		if fi, err := os.Stat(cached); err == nil && fi.Mode().IsRegular() {
			if err := os.Symlink(cached, filepath.Join(dir, p.name)); err != nil {
				return dir, err
			}
			continue
		}
		missing = append(missing, "github.com/containernetworking/plugins/plugins/"+p.pkg)
	}
	if len(missing) > 0 {
		// The version go.mod requires, so the tests run what the plugin
		// is built against.
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", "github.com/containernetworking/plugins").Output()
		if err != nil {
			return dir, fmt.Errorf("version of github.com/containernetworking/plugins: %v", err)
		}
		for i := range missing {
			missing[i] += "@" + strings.TrimSpace(string(out))
		}
		install := exec.Command("go", append([]string{"install", "-trimpath"}, missing...)...)
		install.Dir = dir
		install.Env = append(os.Environ(), "GOBIN="+dir, "CGO_ENABLED=0", "GOFLAGS=")
		if out, err := install.CombinedOutput(); err != nil {
			return dir, fmt.Errorf("build %v: %v\n%s", missing, err, out)
		}
	}
	return dir, nil
}

// testAgent is the node agent's peer double: it records the CNI calls and,
// like the real agent, attaches only a host veth that exists in the node's
// netns.
type testAgent struct {
	nodeNS string

	mu       sync.Mutex
	adds     []agentapi.CNIEndpointRequest
	dels     []agentapi.CNIEndpointRequest
	checks   []agentapi.CNIEndpointRequest
	attached map[string]agentapi.CNIEndpointRequest
	refuse   error // EndpointAdd and EndpointCheck answer it
	notReady string
	// podAddrsAtAttach: global addresses the pod interfaces had when
	// EndpointAdd was called.
	podAddrsAtAttach []string
}

var errNotServed = errors.New("not served by the CNI test agent")

func (a *testAgent) Status(context.Context) (agentapi.Status, error) {
	return agentapi.Status{}, errNotServed
}
func (a *testAgent) Apply(context.Context, agentapi.ApplyRequest) (agentapi.ApplyResponse, error) {
	return agentapi.ApplyResponse{}, errNotServed
}
func (a *testAgent) Delete(context.Context, agentapi.ApplyRequest) (agentapi.ApplyResponse, error) {
	return agentapi.ApplyResponse{}, errNotServed
}
func (a *testAgent) Pods(context.Context) ([]agentapi.Pod, error)         { return nil, errNotServed }
func (a *testAgent) Services(context.Context) ([]agentapi.Service, error) { return nil, errNotServed }
func (a *testAgent) Policies(context.Context) ([]agentapi.Policy, error)  { return nil, errNotServed }
func (a *testAgent) Endpoints(context.Context) ([]agentapi.Endpoint, error) {
	return nil, errNotServed
}
func (a *testAgent) Identities(context.Context) ([]agentapi.Identity, error) {
	return nil, errNotServed
}
func (a *testAgent) BPFPolicy(context.Context, uint32) ([]agentapi.EndpointPolicy, error) {
	return nil, errNotServed
}
func (a *testAgent) Trace(context.Context, agentapi.TraceRequest) (agentapi.TraceResponse, error) {
	return agentapi.TraceResponse{}, errNotServed
}
func (a *testAgent) Shutdown(context.Context, agentapi.ShutdownRequest) error { return errNotServed }

func key(r agentapi.CNIEndpointRequest) string { return r.ContainerID + "/" + r.IfName }

// hostVeth fails unless the request names a veth of the node's netns by
// name and index.
func (a *testAgent) hostVeth(r agentapi.CNIEndpointRequest) error {
	return netns.Do(a.nodeNS, func() error {
		l, err := netlink.LinkByName(r.HostIfName)
		if err != nil {
			return fmt.Errorf("host veth %q: %w", r.HostIfName, err)
		}
		if _, ok := l.(*netlink.Veth); !ok || l.Attrs().Index != r.HostIfIndex {
			return fmt.Errorf("host link %q (ifindex %d) is not the veth with ifindex %d", r.HostIfName, l.Attrs().Index, r.HostIfIndex)
		}
		return nil
	})
}

func (a *testAgent) EndpointAdd(_ context.Context, r agentapi.CNIEndpointRequest) (agentapi.CNIEndpointResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.adds = append(a.adds, r)
	if a.refuse != nil {
		return agentapi.CNIEndpointResponse{}, a.refuse
	}
	if err := a.hostVeth(r); err != nil {
		return agentapi.CNIEndpointResponse{}, err
	}
	// What the pod could already send: its global addresses now.
	err := netns.Do(r.Netns, func() error {
		l, err := netlink.LinkByName(r.IfName)
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		for _, ad := range addrs {
			if ad.IP.IsGlobalUnicast() {
				a.podAddrsAtAttach = append(a.podAddrsAtAttach, ad.IPNet.String())
			}
		}
		return err
	})
	if err != nil {
		return agentapi.CNIEndpointResponse{}, fmt.Errorf("pod interface %s in %s: %w", r.IfName, r.Netns, err)
	}
	a.attached[key(r)] = r
	return agentapi.CNIEndpointResponse{EndpointID: uint32(len(a.adds)), Identity: 1000}, nil
}

func (a *testAgent) EndpointDel(_ context.Context, r agentapi.CNIEndpointRequest) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.dels = append(a.dels, r)
	delete(a.attached, key(r))
	return nil
}

func (a *testAgent) EndpointCheck(_ context.Context, r agentapi.CNIEndpointRequest) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.checks = append(a.checks, r)
	if a.refuse != nil {
		return a.refuse
	}
	if _, ok := a.attached[key(r)]; !ok {
		return &agentapi.NotFoundError{What: "endpoint " + key(r)}
	}
	return a.hostVeth(r)
}

func (a *testAgent) CNIStatus(context.Context) (agentapi.CNIStatusResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return agentapi.CNIStatusResponse{Ready: a.notReady == "", Reason: a.notReady}, nil
}

func (a *testAgent) set(f func(a *testAgent)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f(a)
}

func (a *testAgent) calls() (adds, dels, checks []agentapi.CNIEndpointRequest) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]agentapi.CNIEndpointRequest(nil), a.adds...), append([]agentapi.CNIEndpointRequest(nil), a.dels...), append([]agentapi.CNIEndpointRequest(nil), a.checks...)
}

// Addresses of the node netns, on its lo, that pods connect to.
var (
	nodeV4 = netip.MustParseAddr("192.0.2.1")
	nodeV6 = netip.MustParseAddr("2001:db8:ffff::1")
)

type fixture struct {
	t       *testing.T
	node    string // netns paths
	pods    []string
	agent   *testAgent
	srv     *agentapi.Server
	cni     *libcni.CNIConfig
	list    *libcni.NetworkConfigList
	conf    []byte
	ipamDir string
	cache   string
	suffix  string
}

func newFixture(t *testing.T, mode string, cidrs ...netip.Prefix) *fixture {
	dir := pluginDir(t)
	b := make([]byte, 4)
	rand.Read(b)
	f := &fixture{t: t, suffix: hex.EncodeToString(b)}
	nodeName := "bwk-cnin-" + f.suffix
	if err := netns.Create(nodeName); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Delete(nodeName) })
	f.node = netns.Path(nodeName)
	err := netns.Do(f.node, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		for _, a := range []string{nodeV4.String() + "/32", nodeV6.String() + "/128"} {
			addr, _ := netlink.ParseAddr(a)
			if err := netlink.AddrAdd(lo, addr); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	tmp := t.TempDir()
	f.agent = &testAgent{nodeNS: f.node, attached: map[string]agentapi.CNIEndpointRequest{}}
	sock := filepath.Join(tmp, "agent.sock")
	f.startAgent(sock)
	f.ipamDir = filepath.Join(tmp, "ipam")
	f.conf, err = ConfList(ConfOptions{Name: "bwk-test", Mode: mode, PodCIDRs: cidrs, AgentSocket: sock, MTU: 1400, IPAMDataDir: f.ipamDir})
	if err != nil {
		t.Fatal(err)
	}
	f.list, err = libcni.ConfListFromBytes(f.conf)
	if err != nil {
		t.Fatalf("libcni rejects ConfList's output: %v\n%s", err, f.conf)
	}
	f.cache = filepath.Join(tmp, "cache")
	f.cni = libcni.NewCNIConfigWithCacheDir([]string{dir}, f.cache, nil)
	return f
}

func (f *fixture) startAgent(sock string) {
	srv, err := agentapi.Listen(sock, f.agent)
	if err != nil {
		f.t.Fatal(err)
	}
	go srv.Serve()
	f.srv = srv
	f.t.Cleanup(func() { f.stopAgent() })
}

func (f *fixture) stopAgent() {
	if f.srv != nil {
		f.srv.Close(context.Background())
		f.srv = nil
	}
}

// newPod creates a pod netns and the runtime's view of it.
func (f *fixture) newPod(name string) *libcni.RuntimeConf {
	nsName := fmt.Sprintf("bwk-cnip%d-%s", len(f.pods), f.suffix)
	if err := netns.Create(nsName); err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { netns.Delete(nsName) })
	f.pods = append(f.pods, netns.Path(nsName))
	b := make([]byte, 32)
	rand.Read(b)
	return &libcni.RuntimeConf{
		ContainerID: hex.EncodeToString(b),
		NetNS:       netns.Path(nsName),
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", "default"},
			{"K8S_POD_NAME", name},
			{"K8S_POD_UID", "uid-" + name},
			{"K8S_POD_INFRA_CONTAINER_ID", hex.EncodeToString(b)},
		},
	}
}

// inNode runs fn in the node netns: the plugins libcni starts are born
// there, as under a runtime on the node.
func (f *fixture) inNode(fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return netns.Do(f.node, func() error { return fn(ctx) })
}

func (f *fixture) add(rt *libcni.RuntimeConf) (*current.Result, error) {
	var res types.Result
	err := f.inNode(func(ctx context.Context) error {
		var err error
		res, err = f.cni.AddNetworkList(ctx, f.list, rt)
		return err
	})
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(res)
}

func (f *fixture) del(rt *libcni.RuntimeConf) error {
	return f.inNode(func(ctx context.Context) error { return f.cni.DelNetworkList(ctx, f.list, rt) })
}

func (f *fixture) check(rt *libcni.RuntimeConf) error {
	return f.inNode(func(ctx context.Context) error { return f.cni.CheckNetworkList(ctx, f.list, rt) })
}

func (f *fixture) status() error {
	return f.inNode(func(ctx context.Context) error { return f.cni.GetStatusNetworkList(ctx, f.list) })
}

// nodeLinks lists the node netns's links other than lo.
func (f *fixture) nodeLinks() []string {
	return linksIn(f.t, f.node, "lo")
}

func linksIn(t *testing.T, path string, except ...string) []string {
	var names []string
	err := netns.Do(path, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
	next:
		for _, l := range links {
			for _, e := range except {
				if l.Attrs().Name == e {
					continue next
				}
			}
			names = append(names, l.Attrs().Name)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// reserved lists host-local's reservations (one file per address).
func (f *fixture) reserved() []string {
	entries, err := os.ReadDir(filepath.Join(f.ipamDir, "bwk-test"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		f.t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if n := e.Name(); n != "lock" && !strings.HasPrefix(n, "last_reserved_ip") {
			out = append(out, n)
		}
	}
	return out
}

// echo serves one line back on every connection of ln.
func echo(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err == nil {
				fmt.Fprintf(c, "%s %s", c.RemoteAddr().(*net.TCPAddr).IP, line)
			}
		}()
	}
}

// listen opens an echo listener in the netns at path.
func listen(t *testing.T, path string, addr netip.Addr) net.Listener {
	var ln net.Listener
	err := netns.Do(path, func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go echo(ln)
	return ln
}

// roundTrip connects from the netns at path to the echo listener at dst and
// returns the peer address the listener saw.
func roundTrip(path string, dst net.Addr) (string, error) {
	var seen string
	err := netns.Do(path, func() error {
		c, err := net.DialTimeout("tcp", dst.String(), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintf(c, "hello\n"); err != nil {
			return err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		var msg string
		if _, err := fmt.Sscanf(line, "%s %s", &seen, &msg); err != nil || msg != "hello" {
			return fmt.Errorf("echo answered %q", line)
		}
		return nil
	})
	return seen, err
}

func cniCode(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func TestVersion(t *testing.T) {
	f := newFixture(t, ModeStandalone, netip.MustParsePrefix("10.91.0.0/24"))
	var info interface{ SupportedVersions() []string }
	err := f.inNode(func(ctx context.Context) error {
		var err error
		info, err = f.cni.GetVersionInfo(ctx, PluginType)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(info.SupportedVersions(), ","); got != "1.0.0,1.1.0" {
		t.Fatalf("VERSION: supported %s, want 1.0.0,1.1.0", got)
	}
}

func TestStandalone(t *testing.T) {
	f := newFixture(t, ModeStandalone, netip.MustParsePrefix("10.91.0.0/24"), netip.MustParsePrefix("fd00:91::/64"))

	if err := f.status(); err != nil {
		t.Fatalf("STATUS with a ready agent: %v", err)
	}
	f.agent.set(func(a *testAgent) { a.notReady = "informers not synced" })
	if err := f.status(); cniCode(err) != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), "informers not synced") {
		t.Fatalf("STATUS with an agent not ready: %v, want code %d with the agent's reason", err, types.ErrPluginNotAvailable)
	}
	f.agent.set(func(a *testAgent) { a.notReady = "" })

	rt := f.newPod("web-1")
	start := time.Now()
	res, err := f.add(rt)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	t.Logf("ADD (dual-stack, one pod) took %s", time.Since(start))
	hostName := HostIfName(rt.ContainerID, "eth0")
	if len(hostName) > 15 || !strings.HasPrefix(hostName, "bwk") {
		t.Fatalf("host veth name %q", hostName)
	}
	if len(res.Interfaces) != 2 || res.Interfaces[0].Name != hostName || res.Interfaces[1].Name != "eth0" || res.Interfaces[1].Sandbox != rt.NetNS {
		t.Fatalf("ADD result interfaces: %v", res.Interfaces)
	}
	var podV4, podV6 netip.Addr
	for _, ipc := range res.IPs {
		a, _ := netip.AddrFromSlice(ipc.Address.IP)
		a = a.Unmap()
		ones, bits := ipc.Address.Mask.Size()
		if ones != bits {
			t.Errorf("pod address %s is not a host prefix", ipc.Address.String())
		}
		switch {
		case a.Is4() && netip.MustParsePrefix("10.91.0.0/24").Contains(a):
			podV4 = a
			if !ipc.Gateway.Equal(gatewayV4) {
				t.Errorf("IPv4 gateway %s, want %s", ipc.Gateway, gatewayV4)
			}
		case a.Is6() && netip.MustParsePrefix("fd00:91::/64").Contains(a):
			podV6 = a
			if !ipc.Gateway.Equal(gatewayV6) {
				t.Errorf("IPv6 gateway %s, want %s", ipc.Gateway, gatewayV6)
			}
		default:
			t.Errorf("pod address %s outside the pod CIDRs", a)
		}
	}
	if !podV4.IsValid() || !podV6.IsValid() {
		t.Fatalf("ADD result addresses: %v", res.IPs)
	}
	if len(f.reserved()) != 2 {
		t.Fatalf("host-local reservations after ADD: %v", f.reserved())
	}

	// The agent attached the endpoint before ADD returned, on the host veth
	// that existed then.
	adds, _, _ := f.agent.calls()
	if len(adds) != 1 {
		t.Fatalf("agent saw %d EndpointAdd, want 1", len(adds))
	}
	got := adds[0]
	if got.ContainerID != rt.ContainerID || got.IfName != "eth0" || got.Netns != rt.NetNS || got.PodNamespace != "default" || got.PodName != "web-1" || got.PodUID != "uid-web-1" || got.HostIfName != hostName {
		t.Fatalf("EndpointAdd request: %+v", got)
	}
	if strings.Join(got.IPs, ",") != podV4.String()+"/32,"+podV6.String()+"/128" {
		t.Fatalf("EndpointAdd IPs %v, want %s/32 and %s/128", got.IPs, podV4, podV6)
	}
	// Fail closed: the pod had no address to send from before the agent
	// attached its endpoint.
	f.agent.set(func(a *testAgent) {
		if len(a.podAddrsAtAttach) != 0 {
			t.Errorf("the pod had addresses %v before the agent attached it", a.podAddrsAtAttach)
		}
	})

	// The pod has its MTU, and reaches the node over both families; the
	// node reaches the pod by its /32 route.
	err = netns.Do(rt.NetNS, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if l.Attrs().MTU != 1400 {
			return fmt.Errorf("eth0 MTU %d, want 1400", l.Attrs().MTU)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, dst := range []netip.Addr{nodeV4, nodeV6} {
		ln := listen(t, f.node, dst)
		seen, err := roundTrip(rt.NetNS, ln.Addr())
		if err != nil {
			t.Fatalf("pod -> node %s: %v", dst, err)
		}
		want := podV4
		if dst.Is6() {
			want = podV6
		}
		if seen != want.String() {
			t.Fatalf("node saw the pod as %s, want %s", seen, want)
		}
	}
	for _, dst := range []netip.Addr{podV4, podV6} {
		ln := listen(t, rt.NetNS, dst)
		if _, err := roundTrip(f.node, ln.Addr()); err != nil {
			t.Fatalf("node -> pod %s: %v", dst, err)
		}
	}

	if err := f.check(rt); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if _, _, checks := f.agent.calls(); len(checks) != 1 || checks[0].HostIfName != hostName {
		t.Fatalf("agent EndpointCheck calls: %+v", checks)
	}
	// CHECK sees a pod whose route is gone, and an agent that lost the
	// endpoint.
	var defRoute netlink.Route
	err = netns.Do(rt.NetNS, func() error {
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: nil}, netlink.RT_FILTER_DST)
		if err != nil || len(routes) != 1 {
			return fmt.Errorf("default routes %v: %v", routes, err)
		}
		defRoute = routes[0]
		return netlink.RouteDel(&defRoute)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.check(rt); err == nil {
		t.Fatal("CHECK passed with the pod's default route deleted")
	}
	if err := netns.Do(rt.NetNS, func() error { return netlink.RouteAdd(&defRoute) }); err != nil {
		t.Fatal(err)
	}
	if err := f.check(rt); err != nil {
		t.Fatalf("CHECK after restoring the route: %v", err)
	}
	f.agent.set(func(a *testAgent) { delete(a.attached, rt.ContainerID+"/eth0") })
	if err := f.check(rt); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("CHECK with the endpoint unknown to the agent: %v", err)
	}

	// DEL releases everything; a second DEL succeeds.
	for i := 0; i < 2; i++ {
		if err := f.del(rt); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
		if links := f.nodeLinks(); len(links) != 0 {
			t.Fatalf("node links after DEL #%d: %v", i+1, links)
		}
		if links := linksIn(t, rt.NetNS, "lo"); len(links) != 0 {
			t.Fatalf("pod links after DEL #%d: %v", i+1, links)
		}
		if r := f.reserved(); len(r) != 0 {
			t.Fatalf("host-local reservations after DEL #%d: %v", i+1, r)
		}
	}
	if _, dels, _ := f.agent.calls(); len(dels) != 2 || dels[0].HostIfName != hostName || dels[0].PodName != "web-1" {
		t.Fatalf("agent EndpointDel calls: %+v", dels)
	}
}

// TestStandaloneAgentRefuses: ADD fails when the agent refuses the
// endpoint, and leaves no link and no address behind.
func TestStandaloneAgentRefuses(t *testing.T) {
	f := newFixture(t, ModeStandalone, netip.MustParsePrefix("10.92.0.0/24"), netip.MustParsePrefix("fd00:92::/64"))
	f.agent.set(func(a *testAgent) { a.refuse = errors.New("policy of default/web-2 cannot be loaded") })
	rt := f.newPod("web-2")
	_, err := f.add(rt)
	if err == nil || !strings.Contains(err.Error(), "policy of default/web-2 cannot be loaded") {
		t.Fatalf("ADD with a refusing agent: %v", err)
	}
	if adds, _, _ := f.agent.calls(); len(adds) != 1 {
		t.Fatalf("agent saw %d EndpointAdd, want 1", len(adds))
	}
	if links := f.nodeLinks(); len(links) != 0 {
		t.Fatalf("node links after a failed ADD: %v", links)
	}
	if links := linksIn(t, rt.NetNS, "lo"); len(links) != 0 {
		t.Fatalf("pod links after a failed ADD: %v", links)
	}
	if r := f.reserved(); len(r) != 0 {
		t.Fatalf("host-local reservations after a failed ADD: %v", r)
	}
	// The runtime's DEL after a failed ADD succeeds.
	if err := f.del(rt); err != nil {
		t.Fatalf("DEL after a failed ADD: %v", err)
	}
}

// TestStandaloneAgentDown: ADD fails (try again later) without an agent and
// leaves nothing; DEL of an attached pod whose agent is gone still releases
// its link and addresses.
func TestStandaloneAgentDown(t *testing.T) {
	f := newFixture(t, ModeStandalone, netip.MustParsePrefix("10.93.0.0/24"))
	rt := f.newPod("web-3")
	if _, err := f.add(rt); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	f.stopAgent()
	if err := f.status(); cniCode(err) != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS without an agent: %v, want code %d", err, types.ErrPluginNotAvailable)
	}
	start := time.Now()
	if err := f.del(rt); err != nil {
		t.Fatalf("DEL without an agent: %v", err)
	}
	if d := time.Since(start); d > delAgentWait+5*time.Second {
		t.Fatalf("DEL without an agent took %s", d)
	}
	if links := f.nodeLinks(); len(links) != 0 {
		t.Fatalf("node links after DEL: %v", links)
	}
	if r := f.reserved(); len(r) != 0 {
		t.Fatalf("host-local reservations after DEL: %v", r)
	}

	rt2 := f.newPod("web-4")
	_, err := f.add(rt2)
	if cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "agent is not running") {
		t.Fatalf("ADD without an agent: %v, want code %d", err, types.ErrTryAgainLater)
	}
	if links := f.nodeLinks(); len(links) != 0 {
		t.Fatalf("node links after a failed ADD: %v", links)
	}
	if r := f.reserved(); len(r) != 0 {
		t.Fatalf("host-local reservations after a failed ADD: %v", r)
	}
}

// TestStandaloneGC: GC releases the link and addresses of an attachment
// whose DEL never came (the runtime lost it), and keeps the valid one.
func TestStandaloneGC(t *testing.T) {
	f := newFixture(t, ModeStandalone, netip.MustParsePrefix("10.94.0.0/24"))
	keep, lost := f.newPod("keep"), f.newPod("lost")
	for _, rt := range []*libcni.RuntimeConf{keep, lost} {
		if _, err := f.add(rt); err != nil {
			t.Fatalf("ADD %s: %v", rt.ContainerID, err)
		}
	}
	// The runtime forgot "lost": libcni's cache no longer has it.
	if err := os.Remove(filepath.Join(f.cache, "results", "bwk-test-"+lost.ContainerID+"-eth0")); err != nil {
		t.Fatal(err)
	}
	err := f.inNode(func(ctx context.Context) error {
		return f.cni.GCNetworkList(ctx, f.list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: keep.ContainerID, IfName: "eth0"}}})
	})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if links := f.nodeLinks(); len(links) != 1 || links[0] != HostIfName(keep.ContainerID, "eth0") {
		t.Fatalf("node links after GC: %v, want only %s", links, HostIfName(keep.ContainerID, "eth0"))
	}
	if r := f.reserved(); len(r) != 1 {
		t.Fatalf("host-local reservations after GC: %v, want the kept pod's", r)
	}
	if err := f.check(keep); err != nil {
		t.Fatalf("CHECK of the kept pod after GC: %v", err)
	}
}

// TestChained: bulwark-cni after the real ptp plugin (with host-local).
func TestChained(t *testing.T) {
	f := newFixture(t, ModeChained, netip.MustParsePrefix("10.95.0.0/24"))
	if err := f.status(); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	rt := f.newPod("db-1")
	res, err := f.add(rt)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	// ptp's result, unchanged: its host veth, the /24 address via its
	// gateway.
	if len(res.Interfaces) != 2 || !strings.HasPrefix(res.Interfaces[0].Name, "veth") || len(res.IPs) != 1 {
		t.Fatalf("ADD result: %+v", res)
	}
	if ones, _ := res.IPs[0].Address.Mask.Size(); ones != 24 || res.IPs[0].Gateway.String() != "10.95.0.1" {
		t.Fatalf("ADD result address %s via %s, want ptp's /24 via 10.95.0.1", res.IPs[0].Address.String(), res.IPs[0].Gateway)
	}
	adds, _, _ := f.agent.calls()
	if len(adds) != 1 || adds[0].HostIfName != res.Interfaces[0].Name || adds[0].PodName != "db-1" || len(adds[0].IPs) != 1 || adds[0].IPs[0] != res.IPs[0].Address.String() {
		t.Fatalf("EndpointAdd calls %+v for result %+v", adds, res)
	}
	// ptp configured the pod before bulwark-cni ran (the runtime has not
	// started the pod's containers yet).
	f.agent.set(func(a *testAgent) {
		if len(a.podAddrsAtAttach) != 1 || a.podAddrsAtAttach[0] != res.IPs[0].Address.String() {
			t.Errorf("pod addresses at attach %v, want ptp's %s", a.podAddrsAtAttach, res.IPs[0].Address.String())
		}
	})
	ln := listen(t, f.node, nodeV4)
	seen, err := roundTrip(rt.NetNS, ln.Addr())
	if err != nil || seen != res.IPs[0].Address.IP.String() {
		t.Fatalf("pod -> node: seen as %q, %v", seen, err)
	}
	if err := f.check(rt); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := f.del(rt); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
		if links := f.nodeLinks(); len(links) != 0 {
			t.Fatalf("node links after DEL #%d: %v", i+1, links)
		}
		if r := f.reserved(); len(r) != 0 {
			t.Fatalf("host-local reservations after DEL #%d: %v", i+1, r)
		}
	}
	if _, dels, _ := f.agent.calls(); len(dels) != 2 || dels[0].HostIfName != res.Interfaces[0].Name {
		t.Fatalf("EndpointDel calls: %+v", dels)
	}

	// A refused ADD fails; the runtime's DEL that follows leaves nothing.
	f.agent.set(func(a *testAgent) { a.refuse = errors.New("identity allocation failed") })
	rt2 := f.newPod("db-2")
	if _, err := f.add(rt2); err == nil || !strings.Contains(err.Error(), "identity allocation failed") {
		t.Fatalf("ADD with a refusing agent: %v", err)
	}
	if err := f.del(rt2); err != nil {
		t.Fatalf("DEL after a failed ADD: %v", err)
	}
	if links := f.nodeLinks(); len(links) != 0 {
		t.Fatalf("node links after a failed ADD and DEL: %v", links)
	}
	if r := f.reserved(); len(r) != 0 {
		t.Fatalf("host-local reservations after a failed ADD and DEL: %v", r)
	}
}

// TestSpec100: a runtime speaking CNI 1.0.0 (no STATUS, no GC) gets ADD,
// CHECK and DEL.
func TestSpec100(t *testing.T) {
	f := newFixture(t, ModeStandalone, netip.MustParsePrefix("10.96.200.0/24"))
	conf := strings.Replace(string(f.conf), `"cniVersion": "1.1.0"`, `"cniVersion": "1.0.0"`, 1)
	list, err := libcni.ConfListFromBytes([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	f.list = list
	rt := f.newPod("v100")
	var res types.Result
	err = f.inNode(func(ctx context.Context) error {
		var err error
		res, err = f.cni.AddNetworkList(ctx, f.list, rt)
		return err
	})
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if res.Version() != "1.0.0" {
		t.Fatalf("ADD result of version %s, want 1.0.0", res.Version())
	}
	if err := f.check(rt); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := f.del(rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if links := f.nodeLinks(); len(links) != 0 {
		t.Fatalf("node links after DEL: %v", links)
	}
}

// TestStandaloneConcurrent: pods added and deleted at once, as a node
// starting many pods does, get distinct addresses and links, and all of
// them are released. Logs the ADD latency.
func TestStandaloneConcurrent(t *testing.T) {
	const n = 8
	f := newFixture(t, ModeStandalone, netip.MustParsePrefix("10.97.0.0/24"))
	rts := make([]*libcni.RuntimeConf, n)
	for i := range rts {
		rts[i] = f.newPod(fmt.Sprintf("c-%d", i))
	}
	addrs := make([]string, n)
	took := make([]time.Duration, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range rts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			res, err := f.add(rts[i])
			took[i] = time.Since(start)
			if err == nil {
				addrs[i] = res.IPs[0].Address.String()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("ADD %d: %v", i, err)
		}
		if seen[addrs[i]] {
			t.Fatalf("address %s given twice", addrs[i])
		}
		seen[addrs[i]] = true
	}
	if links := f.nodeLinks(); len(links) != n {
		t.Fatalf("%d host veths for %d pods: %v", len(links), n, links)
	}
	slices.Sort(took)
	t.Logf("ADD of %d pods at once: median %s, max %s", n, took[n/2], took[n-1])
	for i := range rts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f.del(rts[i])
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("DEL %d: %v", i, err)
		}
	}
	if links := f.nodeLinks(); len(links) != 0 {
		t.Fatalf("node links after DEL: %v", links)
	}
	if r := f.reserved(); len(r) != 0 {
		t.Fatalf("host-local reservations after DEL: %v", r)
	}
}
