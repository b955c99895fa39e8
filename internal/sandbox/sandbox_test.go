package sandbox

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/bulwark-net/bulwark/internal/sandbox/cgroup"
	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
	"github.com/bulwark-net/bulwark/internal/sandbox/workload"
)

// TestMain lets the test binary stand in for `bulwark __workload`.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == workload.Command {
		os.Exit(workload.Main(os.Args[2:]))
	}
	os.Exit(m.Run())
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, cgroups and BPF programs")
	}
}

func uniqueInstance(t *testing.T) string {
	b := make([]byte, 4)
	rand.Read(b)
	return "t" + hex.EncodeToString(b)
}

// newTestNode creates a fresh instance torn down (and checked) at cleanup.
func newTestNode(t *testing.T, o Options) *Node {
	t.Helper()
	needRoot(t)
	if o.Instance == "" {
		o.Instance = uniqueInstance(t)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	o.Executable = exe
	n, err := New(o)
	if err != nil {
		Teardown(o.Instance)
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		st := n.State()
		if err := n.Teardown(); err != nil {
			t.Errorf("teardown: %v", err)
		}
		assertGone(t, &st)
	})
	return n
}

// assertGone checks that nothing of the instance is left on the host.
func assertGone(t *testing.T, st *State) {
	t.Helper()
	ents, _ := os.ReadDir(netns.Dir)
	for _, e := range ents {
		if e.Name() == st.NodeNetns || e.Name() == WorldNetns(st.Instance) {
			t.Errorf("netns %s left behind", e.Name())
		}
		for _, p := range st.Pods {
			if e.Name() == p.Netns {
				t.Errorf("pod netns %s left behind", e.Name())
			}
		}
	}
	for _, path := range []string{st.CgroupPath, st.BPFFSDir, StateDir("", st.Instance)} {
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind (%v)", path, err)
		}
	}
	for _, p := range st.Pods {
		if p.Running() {
			t.Errorf("workload of %s (pid %d) still running", p.Key(), p.PID)
		}
	}
}

// loadSampleApp reads the seed's sample-app.yaml.
func loadSampleApp(t *testing.T) ([]*appsv1.Deployment, []*corev1.Service) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "seed", "sample-app.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var deps []*appsv1.Deployment
	var svcs []*corev1.Service
	for _, doc := range strings.Split(string(b), "\n---") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatal(err)
		}
		switch meta.Kind {
		case "Deployment":
			d := &appsv1.Deployment{}
			if err := yaml.Unmarshal([]byte(doc), d); err != nil {
				t.Fatal(err)
			}
			deps = append(deps, d)
		case "Service":
			s := &corev1.Service{}
			if err := yaml.Unmarshal([]byte(doc), s); err != nil {
				t.Fatal(err)
			}
			svcs = append(svcs, s)
		}
	}
	return deps, svcs
}

func startSampleApp(t *testing.T, n *Node) {
	t.Helper()
	deps, svcs := loadSampleApp(t)
	for _, d := range deps {
		specs, err := PodsForDeployment(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range specs {
			if _, err := n.AddPod(s); err != nil {
				t.Fatalf("AddPod %s: %v", s.Name, err)
			}
		}
	}
	var specs []ServiceSpec
	for _, s := range svcs {
		spec, err := ServiceSpecFromService(s)
		if err != nil {
			t.Fatal(err)
		}
		specs = append(specs, spec)
	}
	if _, err := n.SetServices(specs); err != nil {
		t.Fatalf("SetServices: %v", err)
	}
}

func execIn(t *testing.T, n *Node, ns, target string, cmd ...string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code, err := Exec(ctx, ExecOptions{Instance: n.Instance(), Namespace: ns, Target: target, Command: cmd, Stdout: &out, Stderr: &out})
	if err != nil {
		t.Fatalf("exec %v in %s/%s: %v", cmd, ns, target, err)
	}
	return out.String(), code
}

func podsOf(n *Node, ns, deploy string) []PodInfo {
	var out []PodInfo
	for _, p := range n.Pods() {
		if p.Namespace == ns && p.OwnerDeployment == deploy {
			out = append(out, p)
		}
	}
	return out
}

func TestSampleApp(t *testing.T) {
	t.Parallel()
	n := newTestNode(t, Options{})
	startSampleApp(t, n)
	st := n.State()

	// Pods: Kubernetes-style names, replica counts, labels, addresses.
	nameRE := regexp.MustCompile(`^(frontend|backend|database)-[0-9a-f]{10}-[bcdfghjklmnpqrstvwxz2456789]{5}$`)
	want := map[string]int{"frontend": 2, "backend": 2, "database": 1}
	for deploy, count := range want {
		pods := podsOf(n, "demo", deploy)
		if len(pods) != count {
			t.Fatalf("deployment %s: %d pods, want %d", deploy, len(pods), count)
		}
		for _, p := range pods {
			if !nameRE.MatchString(p.Name) {
				t.Errorf("pod name %q is not Kubernetes-style", p.Name)
			}
			if p.Labels["app"] != deploy {
				t.Errorf("pod %s labels %v", p.Name, p.Labels)
			}
			if len(p.IPs) != 1 || !st.PodCIDR.Contains(p.IPs[0]) {
				t.Errorf("pod %s IPs %v outside %v", p.Name, p.IPs, st.PodCIDR)
			}
			if !p.Running() {
				t.Errorf("pod %s workload not running", p.Name)
			}
		}
	}
	dnsPods := podsOf(n, DNSNamespace, DNSDeployment)
	if len(dnsPods) != 1 || dnsPods[0].Labels["k8s-app"] != "kube-dns" {
		t.Fatalf("cluster DNS pod: %+v", dnsPods)
	}

	// No default route in a pod; routes only to sandbox ranges.
	fe := podsOf(n, "demo", "frontend")[0]
	h, err := nsHandle(fe.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	routes, err := h.RouteList(nil, 4)
	h.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
			t.Errorf("pod has a default route: %v", r)
		}
	}

	// HTTP through the Service name: DNS + ClusterIP translation; the
	// backend sees the frontend's real pod address.
	out, code := execIn(t, n, "demo", "deploy/frontend", "wget", "--timeout=5", "-q", "-O-", "http://backend:8080/hello")
	if code != 0 || !strings.Contains(out, "pod=demo/backend-") || !strings.Contains(out, "path=/hello") {
		t.Fatalf("wget backend: exit %d, output %q", code, out)
	}
	front, _ := st.FindPod("demo", "deploy/frontend")
	if !strings.Contains(out, "client="+front.IPs[0].String()+":") {
		t.Errorf("backend saw %q, want client %v", out, front.IPs[0])
	}

	// Plain TCP service (the article's check).
	out, code = execIn(t, n, "demo", "deploy/backend", "nc", "-zv", "-w", "5", "database", "5432")
	if code != 0 {
		t.Fatalf("nc -zv database 5432: exit %d: %s", code, out)
	}

	// DNS: every search-list form resolves to the ClusterIP.
	var backendIP netip.Addr
	for _, s := range n.Services() {
		if s.Namespace == "demo" && s.Name == "backend" {
			backendIP = s.ClusterIP
			if len(s.Ports[0].Backends) != 2 {
				t.Errorf("backend service has backends %v, want 2", s.Ports[0].Backends)
			}
		}
	}
	for _, name := range []string{"backend", "backend.demo", "backend.demo.svc", "backend.demo.svc.cluster.local"} {
		out, code := execIn(t, n, "demo", "deploy/frontend", "getent", "hosts", name)
		if code != 0 || !strings.HasPrefix(out, backendIP.String()+" ") {
			t.Errorf("getent hosts %s: exit %d, %q; want %v", name, code, out, backendIP)
		}
	}
	if _, code := execIn(t, n, "demo", "deploy/frontend", "getent", "hosts", "example.com"); code == 0 {
		t.Errorf("example.com resolved; the sandbox DNS must not forward")
	}

	// Exit status passes through.
	if _, code := execIn(t, n, "demo", "deploy/database", "sh", "-c", "exit 7"); code != 7 {
		t.Errorf("exit status %d, want 7", code)
	}
	// A pod by name works too.
	if out, code := execIn(t, n, "demo", front.Name, "cat", "/etc/resolv.conf"); code != 0 || !strings.Contains(out, "nameserver "+st.DNSServiceIP.String()) || !strings.Contains(out, "search demo.svc.cluster.local svc.cluster.local cluster.local") {
		t.Errorf("resolv.conf in pod: %q", out)
	}
}

func TestUDPAndRemove(t *testing.T) {
	t.Parallel()
	n := newTestNode(t, Options{NoClusterDNS: true})
	srv, err := n.AddPod(PodSpec{Namespace: "ns1", Name: "echo", Labels: map[string]string{"app": "echo"},
		Ports: []ContainerPort{{Name: "echo", Port: 7000, Protocol: "UDP"}, {Name: "redis", Port: 6379}}})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := n.AddPod(PodSpec{Namespace: "ns1", Name: "client"})
	if err != nil {
		t.Fatal(err)
	}
	svcs, err := n.SetServices([]ServiceSpec{{Namespace: "ns1", Name: "echo", Selector: map[string]string{"app": "echo"},
		Ports: []ServicePort{{Name: "u", Protocol: "UDP", Port: 70, TargetPort: "echo"}, {Name: "r", Port: 6379}}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 1 || len(svcs[0].Ports[0].Backends) != 1 || svcs[0].Ports[0].Backends[0].Addr.Port() != 7000 {
		t.Fatalf("named targetPort not resolved: %+v", svcs)
	}
	// UDP echo pod to pod, from a socket created in the client's netns.
	err = netns.Do(cli.NetnsPath, func() error {
		c, err := net.Dial("udp", netip.AddrPortFrom(srv.IPs[0], 7000).String())
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 16)
		k, err := c.Read(buf)
		if err != nil {
			return err
		}
		if string(buf[:k]) != "ping" {
			return fmt.Errorf("echo %q", buf[:k])
		}
		// Plain TCP banner names the server pod and the client address.
		tc, err := net.DialTimeout("tcp", netip.AddrPortFrom(srv.IPs[0], 6379).String(), 5*time.Second)
		if err != nil {
			return err
		}
		defer tc.Close()
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		line := make([]byte, 128)
		k, err = tc.Read(line)
		if err != nil {
			return err
		}
		if want := "pod=ns1/echo client=" + cli.IPs[0].String(); !strings.HasPrefix(string(line[:k]), want) {
			return fmt.Errorf("banner %q, want prefix %q", line[:k], want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// UDP through the ClusterIP with the sandbox cgroup (nc -u).
	out, code := execIn(t, n, "ns1", "client", "sh", "-c", fmt.Sprintf("echo hi | nc -u -w 2 %s 70", svcs[0].ClusterIP))
	if code != 0 || !strings.Contains(out, "hi") {
		t.Errorf("udp via ClusterIP: exit %d, %q", code, out)
	}

	// Remove the server: its process, netns and address go; the service
	// has no backends.
	if err := n.RemovePod("ns1", "echo"); err != nil {
		t.Fatal(err)
	}
	if netns.Exists(srv.Netns) || srv.Running() {
		t.Errorf("removed pod left netns or process")
	}
	for _, s := range n.Services() {
		for _, p := range s.Ports {
			if len(p.Backends) != 0 {
				t.Errorf("service %s still has backends %v", s.Key(), p.Backends)
			}
		}
	}
	// Its address is free again for a new pod of the same name.
	again, err := n.AddPod(PodSpec{Namespace: "ns1", Name: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	if again.IPs[0] != srv.IPs[0] {
		t.Logf("re-added pod got %v (was %v)", again.IPs[0], srv.IPs[0])
	}
}

func TestReopenKeepsPods(t *testing.T) {
	t.Parallel()
	n := newTestNode(t, Options{NoClusterDNS: true})
	p, err := n.AddPod(PodSpec{Namespace: "a", Name: "web", Ports: []ContainerPort{{Port: 80}}})
	if err != nil {
		t.Fatal(err)
	}
	n.Close()
	// A second agent incarnation reopens the same instance.
	n2, err := New(Options{Instance: n.Instance(), Executable: n.opts.Executable, NoClusterDNS: true})
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Close()
	pods := n2.Pods()
	if len(pods) != 1 || pods[0].PID != p.PID || !pods[0].Running() {
		t.Fatalf("after reopen: %+v", pods)
	}
	// Adding the same pod again is a no-op that keeps the process.
	q, err := n2.AddPod(PodSpec{Namespace: "a", Name: "web", Ports: []ContainerPort{{Port: 80}}, Labels: map[string]string{"v": "2"}})
	if err != nil || q.PID != p.PID || q.Labels["v"] != "2" {
		t.Fatalf("re-add: %+v, %v", q, err)
	}
	// A workload that died is restarted by the next AddPod.
	if err := syscall.Kill(q.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for q.Running() {
		time.Sleep(10 * time.Millisecond)
	}
	r, err := n2.AddPod(PodSpec{Namespace: "a", Name: "web", Ports: []ContainerPort{{Port: 80}}, Labels: map[string]string{"v": "2"}})
	if err != nil || !r.Running() || r.PID == q.PID {
		t.Fatalf("restart after crash: %+v, %v", r, err)
	}
	n.lb = nil // n2 owns the handles now; n.Teardown at cleanup only removes
}

func TestTeardownIdempotent(t *testing.T) {
	needRoot(t)
	inst := uniqueInstance(t)
	if err := Teardown(inst); err != nil {
		t.Fatalf("teardown of a missing instance: %v", err)
	}
	if mnt, err := cgroup.Mount(); err == nil {
		if _, err := os.Stat(filepath.Join(mnt, cgroupName(inst))); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("teardown created something")
		}
	}
}

func TestWorld(t *testing.T) {
	t.Parallel()
	n := newTestNode(t, Options{})
	if _, err := n.AddPod(PodSpec{Namespace: "demo", Name: "client"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.SetWorld([]string{"api.github.com", "bad name"}); err == nil {
		t.Fatal("invalid world name accepted")
	}
	hosts, err := n.SetWorld([]string{"api.github.com", "www.googleapis.com"})
	if err != nil {
		t.Fatal(err)
	}
	st := n.State()
	for _, h := range hosts {
		if !st.WorldCIDR.Contains(h.IP) {
			t.Errorf("%s got %v outside %v", h.Name, h.IP, st.WorldCIDR)
		}
	}
	out, code := execIn(t, n, "demo", "client", "wget", "--timeout=5", "-q", "-O-", "http://api.github.com/repos")
	if code != 0 || !strings.Contains(out, "pod=world") || !strings.Contains(out, "host=api.github.com") {
		t.Fatalf("world HTTP: exit %d %q", code, out)
	}
	out, code = execIn(t, n, "demo", "client", "nc", "-z", "-w", "5", "www.googleapis.com", "443")
	if code != 0 {
		t.Fatalf("world 443: exit %d %q", code, out)
	}
	// Undeclared names do not resolve.
	if _, code := execIn(t, n, "demo", "client", "getent", "hosts", "example.org"); code == 0 {
		t.Error("undeclared name resolved")
	}
	if _, err := n.SetWorld(nil); err != nil {
		t.Fatal(err)
	}
	if netns.Exists(WorldNetns(n.Instance())) {
		t.Error("world netns left after SetWorld(nil)")
	}
}

func TestIPv6DualStack(t *testing.T) {
	t.Parallel()
	n := newTestNode(t, Options{IPv6: true})
	st := n.State()
	srv, err := n.AddPod(PodSpec{Namespace: "v6", Name: "web", Labels: map[string]string{"app": "web"}, Ports: []ContainerPort{{Name: "http", Port: 8080}}})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := n.AddPod(PodSpec{Namespace: "v6", Name: "client"})
	if err != nil {
		t.Fatal(err)
	}
	if len(srv.IPs) != 2 || !st.PodCIDR.Contains(srv.IPs[0]) || !st.PodCIDR6.Contains(srv.IPs[1]) {
		t.Fatalf("dual-stack pod IPs %v (ranges %v %v)", srv.IPs, st.PodCIDR, st.PodCIDR6)
	}
	svcs, err := n.SetServices([]ServiceSpec{{Namespace: "v6", Name: "web", Selector: map[string]string{"app": "web"},
		Ports: []ServicePort{{Port: 80, TargetPort: "http"}}}})
	if err != nil {
		t.Fatal(err)
	}
	var web ServiceInfo
	for _, s := range svcs {
		if s.Key() == "v6/web" {
			web = s
		}
	}
	if len(web.ClusterIPs) != 2 || !st.ServiceCIDR6.Contains(web.ClusterIPs[1]) {
		t.Fatalf("service ClusterIPs %v", web.ClusterIPs)
	}
	// No IPv6 default route either.
	h, err := nsHandle(cli.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	routes, err := h.RouteList(nil, 10) // AF_INET6
	h.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.String() == "::/0" {
			t.Errorf("pod has an IPv6 default route: %v", r)
		}
	}
	clientTag := "client=[" + cli.IPs[1].String() + "]:"
	// Pod to pod over IPv6.
	out, code := execIn(t, n, "v6", "client", "wget", "--timeout=5", "-q", "-O-", "http://["+srv.IPs[1].String()+"]:8080/direct")
	if code != 0 || !strings.Contains(out, "pod=v6/web") || !strings.Contains(out, clientTag) {
		t.Fatalf("IPv6 pod to pod: exit %d %q", code, out)
	}
	// IPv6 ClusterIP translated by connect6; the backend sees the client.
	out, code = execIn(t, n, "v6", "client", "wget", "--timeout=5", "-q", "-O-", "http://["+web.ClusterIPs[1].String()+"]/svc")
	if code != 0 || !strings.Contains(out, "path=/svc") || !strings.Contains(out, clientTag) {
		t.Fatalf("IPv6 ClusterIP: exit %d %q", code, out)
	}
	// AAAA records for the service.
	out, code = execIn(t, n, "v6", "client", "getent", "ahostsv6", "web")
	if code != 0 || !strings.HasPrefix(out, web.ClusterIPs[1].String()+" ") {
		t.Errorf("getent ahostsv6 web: exit %d %q, want %v", code, out, web.ClusterIPs[1])
	}
}
