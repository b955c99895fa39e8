// Package kubeagent tests the agent in Kubernetes mode against a real API
// server (k8stest): node network namespaces made by the test, pods created
// as API objects with spec.nodeName set and wired by the real bulwark-cni
// binary through libcni as a container runtime does, and real TCP traffic.
package kubeagent

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/bulwark-net/bulwark/internal/agent"
	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/cni"
	"github.com/bulwark-net/bulwark/internal/k8s/crds"
	"github.com/bulwark-net/bulwark/internal/k8s/k8stest"
	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
)

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

// pluginDir builds bulwark-cni and takes host-local from the Kubernetes
// binaries' cache, or builds it at go.mod's plugins version.
func pluginDir(t testing.TB) string {
	t.Helper()
	bins.once.Do(func() {
		dir, err := os.MkdirTemp("", "bulwark-kubeagent-bin-")
		bins.dir = dir
		if err != nil {
			bins.err = err
			return
		}
		build := exec.Command("go", "build", "-o", filepath.Join(dir, cni.PluginType), "github.com/bulwark-net/bulwark/cmd/bulwark-cni")
		if out, err := build.CombinedOutput(); err != nil {
			bins.err = fmt.Errorf("build bulwark-cni: %v\n%s", err, out)
			return
		}
		home, _ := os.UserHomeDir()
		cached := filepath.Join(home, ".cache/bulwark/kube/v1.37.2/bin/cni/host-local")
		if fi, err := os.Stat(cached); err == nil && fi.Mode().IsRegular() {
			bins.err = os.Symlink(cached, filepath.Join(dir, "host-local"))
			return
		}
		v, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", "github.com/containernetworking/plugins").Output()
		if err != nil {
			bins.err = err
			return
		}
		install := exec.Command("go", "install", "-trimpath", "github.com/containernetworking/plugins/plugins/ipam/host-local@"+strings.TrimSpace(string(v)))
		install.Dir = dir
		install.Env = append(os.Environ(), "GOBIN="+dir, "CGO_ENABLED=0", "GOFLAGS=")
		if out, err := install.CombinedOutput(); err != nil {
			bins.err = fmt.Errorf("build host-local: %v\n%s", err, out)
		}
	})
	if bins.err != nil {
		t.Fatal(bins.err)
	}
	return bins.dir
}

func suffix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// env is one control plane with node namespaces and their agents.
type env struct {
	t       testing.TB
	cluster *k8stest.Cluster
	dyn     dynamic.Interface
	suffix  string
	link    string // the node's shared segment (a bridge in the first node's netns)
	nodes   []*node
}

func newEnv(t testing.TB) *env {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, veths, BPF")
	}
	c := k8stest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	must(t, crds.Install(ctx, c.Config))
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, cluster: c, dyn: dyn, suffix: suffix()}
}

// node is one Kubernetes node: its network namespace, Node object and
// agent.
type node struct {
	e      *env
	name   string
	ns     string // netns path
	ip     netip.Addr
	cidr   netip.Prefix
	dir    string
	paths  agent.Paths
	conf   string // the CNI configuration the agent writes
	cancel context.CancelFunc
	done   chan error
	cni    *libcni.CNIConfig
	pods   map[string]*pod
	// configure, when set, changes the agent's options before start.
	configure func(*agent.KubeOptions)
}

// addNode makes node i: a netns whose eth0 is on a shared segment
// (192.0.2.0/24, a veth to the first node's bridge), a Node object with pod
// CIDR 10.244.<i+1>.0/24 and InternalIP 192.0.2.<i+1>.
func (e *env) addNode() *node {
	t := e.t
	i := len(e.nodes)
	n := &node{e: e, name: fmt.Sprintf("node-%d-%s", i, e.suffix), ip: netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}),
		cidr: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 0}), 24), pods: map[string]*pod{}}
	nsName := fmt.Sprintf("bwk-k8n%d-%s", i, e.suffix)
	if err := netns.Create(nsName); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Delete(nsName) })
	n.ns = netns.Path(nsName)
	must(t, netns.Do(n.ns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}))
	if i > 0 {
		// A veth from node 0's netns to this one: two nodes on one L2
		// segment.
		peer := fmt.Sprintf("bwkn%d%s", i, e.suffix[:4])
		must(t, netns.Do(e.nodes[0].ns, func() error {
			h, err := netns.Handle(n.ns)
			if err != nil {
				return err
			}
			defer h.Close()
			va := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: peer}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(h))}
			if err := netlink.LinkAdd(va); err != nil {
				return err
			}
			l, err := netlink.LinkByName(peer)
			if err != nil {
				return err
			}
			a, _ := netlink.ParseAddr(e.nodes[0].ip.String() + "/24")
			if i == 1 {
				if err := netlink.AddrAdd(l, a); err != nil {
					return err
				}
			}
			return netlink.LinkSetUp(l)
		}))
		must(t, netns.Do(n.ns, func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			a, _ := netlink.ParseAddr(n.ip.String() + "/24")
			if err := netlink.AddrAdd(l, a); err != nil {
				return err
			}
			return netlink.LinkSetUp(l)
		}))
	} else {
		must(t, netns.Do(n.ns, func() error {
			lo, _ := netlink.LinkByName("lo")
			a, _ := netlink.ParseAddr(n.ip.String() + "/32")
			return netlink.AddrAdd(lo, a)
		}))
	}
	ctx := context.Background()
	nd := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name}, Spec: corev1.NodeSpec{PodCIDR: n.cidr.String(), PodCIDRs: []string{n.cidr.String()}}}
	nd, err := e.cluster.Client.CoreV1().Nodes().Create(ctx, nd, metav1.CreateOptions{})
	must(t, err)
	nd.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.ip.String()}}
	_, err = e.cluster.Client.CoreV1().Nodes().UpdateStatus(ctx, nd, metav1.UpdateOptions{})
	must(t, err)

	n.dir = t.TempDir()
	sfx := suffix()
	n.paths = agent.NewPaths(agent.PathsOptions{Instance: "k8s", RunRoot: filepath.Join(n.dir, "run"), StateRoot: filepath.Join(n.dir, "state"),
		PinRoot: "/sys/fs/bpf/bwk-k8s-" + sfx})
	t.Cleanup(func() { os.RemoveAll(n.paths.PinRoot) })
	n.conf = filepath.Join(n.dir, "net.d", agent.ConfListName)
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{pluginDir(t)}, filepath.Join(n.dir, "cni-cache"), nil)
	e.nodes = append(e.nodes, n)
	return n
}

// start runs the node's agent until stop (or the test's end).
func (n *node) start() {
	t := n.e.t
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.done = cancel, make(chan error, 1)
	none := ""
	opts := agent.KubeOptions{
		Options: agent.Options{Paths: n.paths, HubbleAddr: &none, MetricsAddr: &none,
			Log: slog.New(slog.NewTextHandler(testWriter{t, n.name}, &slog.HandlerOptions{Level: slog.LevelInfo}))},
		REST: n.e.cluster.Config, NodeName: n.name, NodeNetns: n.ns,
		CNIConf: n.conf, IPAMDataDir: filepath.Join(n.dir, "ipam"), NativeRouting: true,
	}
	if n.configure != nil {
		n.configure(&opts)
	}
	go func() { n.done <- agent.RunKubernetes(ctx, opts) }()
	t.Cleanup(n.stop)
	// Ready when the CNI configuration is written and STATUS says so.
	c := agentapi.NewClient(n.paths.Socket)
	eventually(t, 2*time.Minute, "agent "+n.name+" ready", func() error {
		select {
		case err := <-n.done:
			n.done <- err
			t.Fatalf("agent %s exited: %v", n.name, err)
		default:
		}
		st, err := c.CNIStatus(context.Background())
		if err != nil {
			return err
		}
		if !st.Ready {
			return errors.New(st.Reason)
		}
		if _, err := os.Stat(n.conf); err != nil {
			return err
		}
		return nil
	})
}

func (n *node) stop() {
	if n.cancel == nil {
		return
	}
	n.cancel()
	if err := <-n.done; err != nil {
		n.e.t.Errorf("agent %s: %v", n.name, err)
	}
	n.cancel = nil
}

type testWriter struct {
	t    testing.TB
	name string
}

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Logf("%s: %s", w.name, strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// pod is a pod of the test: its API object and its network namespace.
type pod struct {
	ns, name string
	netns    string
	ip       netip.Addr
	rt       *libcni.RuntimeConf
	list     *libcni.NetworkConfigList
}

// runPod creates the pod object on node n and does what the kubelet and the
// runtime do: a network namespace, CNI ADD through libcni with the
// configuration the agent wrote, status.podIP. Listeners answer on ports.
func (n *node) runPod(p *corev1.Pod, ports ...int) *pod {
	return n.runPodWith(p, true, ports...)
}

// runPodWith is runPod; create false leaves the API object to
// publishPod (a pod the agent's informer does not know at CNI ADD).
func (n *node) runPodWith(p *corev1.Pod, create bool, ports ...int) *pod {
	t := n.e.t
	ctx := context.Background()
	p = p.DeepCopy()
	p.Spec.NodeName = n.name
	p.ResourceVersion = ""
	var created *corev1.Pod
	args := [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", p.Namespace}, {"K8S_POD_NAME", p.Name}}
	if create {
		var err error
		created, err = n.e.cluster.Client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
		must(t, err)
		args = append(args, [2]string{"K8S_POD_UID", string(created.UID)})
	}
	nsName := fmt.Sprintf("bwk-k8p%d-%s", len(n.e.allPods()), n.e.suffix)
	must(t, netns.Create(nsName))
	t.Cleanup(func() { netns.Delete(nsName) })
	pd := &pod{ns: p.Namespace, name: p.Name, netns: netns.Path(nsName)}
	cid := make([]byte, 32)
	rand.Read(cid)
	pd.rt = &libcni.RuntimeConf{ContainerID: hex.EncodeToString(cid), NetNS: pd.netns, IfName: "eth0", Args: args}
	b, err := os.ReadFile(n.conf)
	must(t, err)
	list, err := libcni.ConfListFromBytes(b)
	must(t, err)
	pd.list = list
	var res *current.Result
	must(t, n.inNode(func(ctx context.Context) error {
		r, err := n.cni.AddNetworkList(ctx, list, pd.rt)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	}))
	t.Cleanup(func() {
		n.inNode(func(ctx context.Context) error { return n.cni.DelNetworkList(ctx, list, pd.rt) })
	})
	for _, ip := range res.IPs {
		if a, ok := netip.AddrFromSlice(ip.Address.IP); ok && a.Unmap().Is4() {
			pd.ip = a.Unmap()
		}
	}
	if !pd.ip.IsValid() {
		t.Fatalf("pod %s/%s: no IPv4 address in %v", p.Namespace, p.Name, res)
	}
	if create {
		n.setStatus(pd, created)
	}
	must(t, netns.Do(pd.netns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}))
	for _, port := range ports {
		var ln net.Listener
		must(t, netns.Do(pd.netns, func() error {
			var err error
			ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
			return err
		}))
		t.Cleanup(func() { ln.Close() })
		go serve(ln)
	}
	n.pods[p.Namespace+"/"+p.Name] = pd
	return pd
}

// removePod does what the kubelet does when a pod goes: CNI DEL, then
// the API object is gone.
func (n *node) removePod(pd *pod) {
	t := n.e.t
	must(t, n.inNode(func(ctx context.Context) error { return n.cni.DelNetworkList(ctx, pd.list, pd.rt) }))
	zero := int64(0)
	must(t, n.e.cluster.Client.CoreV1().Pods(pd.ns).Delete(context.Background(), pd.name, metav1.DeleteOptions{GracePeriodSeconds: &zero}))
	delete(n.pods, pd.ns+"/"+pd.name)
}

// setStatus does the kubelet's part: the pod's phase and addresses.
func (n *node) setStatus(pd *pod, created *corev1.Pod) {
	created.Status.Phase = corev1.PodRunning
	created.Status.PodIP = pd.ip.String()
	created.Status.PodIPs = []corev1.PodIP{{IP: pd.ip.String()}}
	_, err := n.e.cluster.Client.CoreV1().Pods(created.Namespace).UpdateStatus(context.Background(), created, metav1.UpdateOptions{})
	must(n.e.t, err)
}

// publishPod creates the API object of a pod runPodWith wired without one.
func (n *node) publishPod(pd *pod, p *corev1.Pod) {
	p = p.DeepCopy()
	p.Spec.NodeName = n.name
	created, err := n.e.cluster.Client.CoreV1().Pods(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{})
	must(n.e.t, err)
	n.setStatus(pd, created)
}

func (e *env) allPods() []*pod {
	var out []*pod
	for _, n := range e.nodes {
		for _, p := range n.pods {
			out = append(out, p)
		}
	}
	return out
}

func (n *node) inNode(fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return netns.Do(n.ns, func() error { return fn(ctx) })
}

// serve echoes lines on every connection until it closes.
func serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if _, err := c.Write([]byte(line)); err != nil {
					return
				}
			}
		}()
	}
}

// conn is an open connection from a pod.
type conn struct {
	c net.Conn
	r *bufio.Reader
}

// dial connects from pod src to dst:port (2s bound).
func dial(src *pod, dst netip.Addr, port int) (*conn, error) {
	var c net.Conn
	err := netns.Do(src.netns, func() error {
		var err error
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(dst, uint16(port)).String(), 2*time.Second)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &conn{c: c, r: bufio.NewReader(c)}, nil
}

// echo sends a line and reads it back (2s bound).
func (c *conn) echo(msg string) error {
	c.c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(c.c, "%s\n", msg); err != nil {
		return err
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return err
	}
	if line != msg+"\n" {
		return fmt.Errorf("echo answered %q", line)
	}
	return nil
}

// reach reports whether a new connection from src to dst:port carries a
// round trip.
func reach(src *pod, dst *pod, port int) error {
	c, err := dial(src, dst.ip, port)
	if err != nil {
		return err
	}
	defer c.c.Close()
	return c.echo("ping")
}

// expect waits until src→dst:port is as wanted (the agent converges
// asynchronously after an API change).
func expect(t testing.TB, src, dst *pod, port int, allowed bool) {
	t.Helper()
	what := fmt.Sprintf("%s/%s -> %s/%s:%d", src.ns, src.name, dst.ns, dst.name, port)
	want := "allowed"
	if !allowed {
		want = "denied"
	}
	eventually(t, 30*time.Second, what+" "+want, func() error {
		err := reach(src, dst, port)
		switch {
		case allowed && err != nil:
			return err
		case !allowed && err == nil:
			return errors.New("connected")
		}
		return nil
	})
}

func eventually(t testing.TB, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s: %v", what, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

var resources = map[string]schema.GroupVersionResource{
	"Namespace":                      {Version: "v1", Resource: "namespaces"},
	"Service":                        {Version: "v1", Resource: "services"},
	"NetworkPolicy":                  {Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"},
	"CiliumNetworkPolicy":            {Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"},
	"CiliumClusterwideNetworkPolicy": {Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"},
}

// apply creates the documents of a seed file in the API server, as
// 'kubectl apply -f' does for new objects (Deployments are left to the
// test, which runs their pods).
func (e *env) apply(file string) {
	t := e.t
	b, err := os.ReadFile(file)
	must(t, err)
	for _, doc := range strings.Split(string(b), "\n---") {
		var m map[string]any
		must(t, yaml.Unmarshal([]byte(doc), &m))
		if m == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		gvr, ok := resources[u.GetKind()]
		if !ok {
			continue
		}
		var ri dynamic.ResourceInterface = e.dyn.Resource(gvr)
		if u.GetNamespace() != "" {
			ri = e.dyn.Resource(gvr).Namespace(u.GetNamespace())
		}
		if _, err := ri.Create(context.Background(), u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("%s: %s %s: %v", file, u.GetKind(), u.GetName(), err)
		}
		if u.GetKind() == "Namespace" {
			e.serviceAccount(u.GetName())
		}
	}
}

// serviceAccount creates the namespace's default service account (what
// kube-controller-manager would), which pod admission requires.
func (e *env) serviceAccount(ns string) {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: ns}}
	if _, err := e.cluster.Client.CoreV1().ServiceAccounts(ns).Create(context.Background(), sa, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// workloadPods are the pods of a seed file's Deployments.
func workloadPods(t testing.TB, file string) []*corev1.Pod {
	set, err := manifest.LoadStrict(file)
	must(t, err)
	return set.WorkloadPods()
}

func seed(name string) string { return filepath.Join("..", "..", "testdata", "seed", name) }
