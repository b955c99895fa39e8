package cluster_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/bulwark-net/bulwark/internal/cluster"
	"github.com/bulwark-net/bulwark/internal/cluster/node"
	"github.com/bulwark-net/bulwark/internal/cluster/proc"
	"github.com/bulwark-net/bulwark/test/sandboxtest"
)

// policyDelay bounds how long a policy change takes to be enforced on
// every node of a loaded two-core machine (informer event, reconcile,
// datapath sync); checks that expect a change poll for at most this long.
const policyDelay = 60 * time.Second

// kube is a cluster under test: kubectl and a client-go clientset.
type kube struct {
	t          *testing.T
	name       string
	kubeconfig string
	kubectlBin string
	cs         kubernetes.Interface
	root       string
}

func (k *kube) kubectl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, k.kubectlBin, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+k.kubeconfig)
	var o bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &o
	err := cmd.Run()
	return o.String(), err
}

func (k *kube) mustKubectl(args ...string) string {
	k.t.Helper()
	out, err := k.kubectl(args...)
	if err != nil {
		k.t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// seed is the path of one of the article's files, unchanged.
func (k *kube) seed(name string) string { return filepath.Join(k.root, "testdata", "seed", name) }

// httpGet is wget from a pod, as the article runs it; true when the
// request got an answer from the expected pod (want, a name prefix).
func (k *kube) httpGet(ns, pod, url, want string) (bool, string) {
	out, err := k.kubectl("exec", "-n", ns, pod, "--", "wget", "--timeout=2", "-q", "-O-", url)
	return err == nil && strings.Contains(out, "pod="+want), out
}

// tcpConnect is the article's `nc -zv HOST PORT` from a pod.
func (k *kube) tcpConnect(ns, pod, host, port string) (bool, string) {
	out, err := k.kubectl("exec", "-n", ns, pod, "--", "nc", "-zv", "-w", "2", host, port)
	return err == nil && strings.Contains(out, "succeeded"), out
}

// resolves is a DNS lookup of name from a pod through the cluster DNS.
func (k *kube) resolves(ns, pod, name string) bool {
	out, err := k.kubectl("exec", "-n", ns, pod, "--", "getent", "hosts", name)
	return err == nil && strings.TrimSpace(out) != ""
}

// heldConn is a long-lived TCP connection from a pod ('kubectl exec -i
// POD -- nc HOST PORT') to a server that echoes (the workload's plain TCP
// ports).
type heldConn struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
}

// holdTCP connects from pod to host:port and reads the server's banner.
func (k *kube) holdTCP(ns, pod, host, port string) *heldConn {
	k.t.Helper()
	cmd := exec.Command(k.kubectlBin, "exec", "-i", "-n", ns, pod, "--", "nc", host, port)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+k.kubeconfig)
	in, err := cmd.StdinPipe()
	if err != nil {
		k.t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		k.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		k.t.Fatal(err)
	}
	c := &heldConn{cmd: cmd, in: in, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	k.t.Cleanup(c.close)
	if line, err := c.next(30 * time.Second); err != nil || !strings.HasPrefix(line, "pod=") {
		k.t.Fatalf("%s/%s -> %s:%s: no banner: %q %v", ns, pod, host, port, line, err)
	}
	return c
}

func (c *heldConn) next(timeout time.Duration) (string, error) {
	select {
	case l, ok := <-c.lines:
		if !ok {
			return "", errors.New("connection closed")
		}
		return l, nil
	case <-time.After(timeout):
		return "", fmt.Errorf("nothing read in %s", timeout)
	}
}

// echo sends msg and waits for it to come back.
func (c *heldConn) echo(msg string) error {
	if _, err := fmt.Fprintln(c.in, msg); err != nil {
		return err
	}
	l, err := c.next(15 * time.Second)
	if err != nil {
		return err
	}
	if l != msg {
		return fmt.Errorf("read %q, want %q", l, msg)
	}
	return nil
}

func (c *heldConn) close() {
	c.in.Close()
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
}

// eventually fails the test unless check turns true within policyDelay.
func (k *kube) eventually(what string, check func() (bool, string)) {
	k.t.Helper()
	var last string
	if !sandboxtest.Eventually(policyDelay, func() bool {
		ok, out := check()
		last = out
		return ok
	}) {
		k.t.Fatalf("%s: not within %s; last output:\n%s", what, policyDelay, last)
	}
}

// policyStatus is the part of a cilium.io policy's status the agents write.
type policyStatus struct {
	Status struct {
		Nodes map[string]struct {
			OK        bool   `json:"ok"`
			Enforcing bool   `json:"enforcing"`
			Error     string `json:"error"`
		} `json:"nodes"`
	} `json:"status"`
}

// waitEnforcing waits until every node's agent reports the policy as
// enforcing (status.nodes, written by each agent as Cilium's do).
func (k *kube) waitEnforcing(kind, ns, name string, nodes []string) {
	k.t.Helper()
	args := []string{"get", kind, name, "-o", "json"}
	if ns != "" {
		args = append(args, "-n", ns)
	}
	k.eventually(fmt.Sprintf("%s %s/%s enforcing on %v", kind, ns, name, nodes), func() (bool, string) {
		out, err := k.kubectl(args...)
		if err != nil {
			return false, out
		}
		var st policyStatus
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return false, err.Error()
		}
		for _, n := range nodes {
			s, ok := st.Status.Nodes[n]
			if !ok || !s.OK || !s.Enforcing {
				return false, out
			}
		}
		return true, ""
	})
}

// TestSeedWalkthroughTwoNodes is the seed article's walk-through with
// kubectl against a real two-node cluster whose pod network is Bulwark's
// (bulwark-cni, one agent per node in Kubernetes mode): the sample app
// spread over both nodes, default deny, the article's three policies and
// the egress they leave out, checked pod to pod across the nodes; a node's
// agent killed (its pods stay enforced) and restarted (it enforces
// changes); the article's CiliumClusterwideNetworkPolicy.
func TestSeedWalkthroughTwoNodes(t *testing.T) {
	seedWalkthrough(t, cluster.CNIBulwark, cluster.AgentsDaemonSet)
}

// TestSeedWalkthroughTwoNodesChained is the same walk-through with
// bulwark-cni chained after the standard ptp and host-local plugins.
func TestSeedWalkthroughTwoNodesChained(t *testing.T) {
	seedWalkthrough(t, cluster.CNIBulwarkChained, cluster.AgentsProcess)
}

func seedWalkthrough(t *testing.T, cni, agents string) {
	need(t)
	name := uniqueName(t)
	root, err := sandboxtest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	clusterUp(t, ctx, name, cni, agents, func() {
		if agents == cluster.AgentsDaemonSet {
			kc, kubectl := env(t, name)
			out, _ := exec.Command(kubectl, "--kubeconfig", kc, "logs", "-n", "kube-system", "--prefix", "--tail", "30",
				"-l", "app.kubernetes.io/component=agent").CombinedOutput()
			t.Logf("agent pods' logs:\n%s", out)
			return
		}
		for _, n := range []string{"node-1", "node-2"} {
			dir := filepath.Join(cluster.Dir(name), "nodes", n)
			t.Logf("agent log of %s:\n%s", n, proc.LogTail(dir, node.Agent, 30))
		}
	})
	kubeconfig, kubectlBin := env(t, name)
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	k := &kube{t: t, name: name, kubeconfig: kubeconfig, kubectlBin: kubectlBin, cs: cs, root: root}
	nodes := []string{"node-1", "node-2"}

	// The article: kubectl apply -f sample-app.yaml (done by up's -f),
	// kubectl wait --for=condition=Ready pods --all -n demo.
	k.mustKubectl("wait", "--for=condition=Ready", "pods", "--all", "-n", "demo", "--timeout=240s")
	pods, err := cs.CoreV1().Pods("demo").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	byApp := map[string][]corev1.Pod{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.PodIP != "" {
			byApp[p.Labels["app"]] = append(byApp[p.Labels["app"]], p)
		}
	}
	frontends, backends, databases := byApp["frontend"], byApp["backend"], byApp["database"]
	if len(frontends) == 0 || len(backends) == 0 || len(databases) == 0 {
		t.Fatalf("sample app pods: %d frontends, %d backends, %d databases", len(frontends), len(backends), len(databases))
	}
	crossNode := false
	for _, f := range frontends {
		for _, b := range backends {
			crossNode = crossNode || f.Spec.NodeName != b.Spec.NodeName
		}
	}
	if !crossNode {
		t.Fatalf("no frontend and backend on different nodes: %s", k.mustKubectl("get", "pods", "-n", "demo", "-o", "wide"))
	}
	fe := frontends[0].Name
	be := backends[0].Name
	db := databases[0]

	// every frontend -> every backend pod, by pod IP: across the nodes
	// whenever the two are on different ones.
	allPairs := func(want bool) func() (bool, string) {
		return func() (bool, string) {
			var bad []string
			for _, f := range frontends {
				for _, b := range backends {
					ok, out := k.httpGet("demo", f.Name, "http://"+b.Status.PodIP+":8080/", b.Name)
					if ok != want {
						bad = append(bad, fmt.Sprintf("%s (%s) -> %s (%s): reached=%v %s", f.Name, f.Spec.NodeName, b.Name, b.Spec.NodeName, ok, strings.TrimSpace(out)))
					}
				}
			}
			return len(bad) == 0, strings.Join(bad, "\n")
		}
	}

	// Before any policy everything is reachable, by name too.
	k.eventually("frontend -> every backend before any policy", allPairs(true))
	k.eventually("frontend -> http://backend:8080 before any policy", func() (bool, string) {
		return k.httpGet("demo", fe, "http://backend:8080", "backend-")
	})
	k.eventually("backend -> database:5432 before any policy", func() (bool, string) {
		return k.tcpConnect("demo", be, "database", "5432")
	})

	// Step 1: default deny. frontend -> backend is blocked, and so is DNS
	// (egress is denied too).
	k.mustKubectl("apply", "-f", k.seed("default-deny.yaml"))
	k.eventually("frontend -> backend blocked under default-deny-all", func() (bool, string) {
		ok, out := allPairs(false)()
		return ok, out
	})
	k.eventually("DNS blocked under default-deny-all", func() (bool, string) {
		return !k.resolves("demo", fe, "backend.demo.svc.cluster.local"), "getent still resolves"
	})

	// Step 2: the article's three policies. DNS works again; frontend ->
	// backend stays blocked: default-deny-all also denies the frontend's
	// egress and none of the three allows it (the article's error).
	k.mustKubectl("apply", "-f", k.seed("frontend-to-backend.yaml"), "-f", k.seed("backend-to-database.yaml"), "-f", k.seed("allow-dns.yaml"))
	for _, p := range []string{"frontend-to-backend", "backend-to-database", "allow-dns"} {
		k.waitEnforcing("cnp", "demo", p, nodes)
	}
	out := k.mustKubectl("get", "cnp", "-n", "demo")
	if strings.Count(out, "True") != 3 {
		t.Errorf("kubectl get cnp -n demo: want VALID True for the three policies:\n%s", out)
	}
	k.eventually("DNS resolves with allow-dns", func() (bool, string) {
		return k.resolves("demo", fe, "backend.demo.svc.cluster.local"), "getent does not resolve"
	})
	if ok, out := allPairs(false)(); !ok {
		t.Errorf("frontend -> backend open without an egress allow:\n%s", out)
	}
	if ok, out := k.tcpConnect("demo", be, "database", "5432"); ok {
		t.Errorf("backend -> database open without an egress allow:\n%s", out)
	}

	// The drops, as flows from both nodes' agents merged (the relay):
	// each node saw its own pods' egress denied.
	k.eventually("dropped flows from both nodes through observe --cluster", func() (bool, string) {
		out, err := bulwark(t, ctx, "observe", "--cluster", name, "--namespace", "demo", "--verdict", "DROPPED", "--last", "500", "-o", "json")
		if err != nil {
			return false, fmt.Sprintf("observe --cluster: %v\n%s", err, out)
		}
		seen := map[string]bool{}
		for _, line := range strings.Split(out, "\n") {
			var f struct {
				Flow struct {
					NodeName string `json:"nodeName"`
				} `json:"flow"`
			}
			if json.Unmarshal([]byte(line), &f) == nil && f.Flow.NodeName != "" {
				seen[f.Flow.NodeName] = true
			}
		}
		return seen["node-1"] && seen["node-2"], fmt.Sprintf("flows from nodes %v:\n%.2000s", seen, out)
	})

	// Step 3: the egress the article leaves out. The intended paths open
	// on every pair, across nodes; the others stay shut.
	k.mustKubectl("apply", "-f", filepath.Join(root, "test", "e2e", "testdata", "egress-allowances.yaml"))
	k.waitEnforcing("cnp", "demo", "frontend-egress-to-backend", nodes)
	k.eventually("frontend -> every backend with the egress allowances", allPairs(true))
	k.eventually("frontend -> http://backend:8080 (Service, DNS)", func() (bool, string) {
		return k.httpGet("demo", fe, "http://backend:8080", "backend-")
	})
	for _, b := range backends {
		b := b
		k.eventually(b.Name+" ("+b.Spec.NodeName+") -> database:5432", func() (bool, string) {
			return k.tcpConnect("demo", b.Name, "database", "5432")
		})
	}
	for _, f := range frontends {
		if ok, out := k.tcpConnect("demo", f.Name, db.Status.PodIP, "5432"); ok {
			t.Errorf("%s (%s) -> database %s:5432 open: no policy allows it\n%s", f.Name, f.Spec.NodeName, db.Status.PodIP, out)
		}
	}
	if ok, out := k.httpGet("demo", be, "http://"+frontends[0].Status.PodIP+":80/", "frontend-"); ok {
		t.Errorf("backend -> frontend:80 open: no policy allows it\n%s", out)
	}

	// Step 4: the agent of the database's node goes away: its pod is
	// deleted (the DaemonSet makes a new one, as on an upgrade), or its
	// process is killed and later started again. Its pods keep their
	// policy while no agent runs: an established allowed connection keeps
	// carrying data, allowed paths stay open, denied stay shut. The new
	// agent adopts them and enforces changes.
	victim := db.Spec.NodeName
	held := k.holdTCP("demo", be, "database", "5432")
	if err := held.echo("before the agent goes"); err != nil {
		t.Fatalf("%s -> database:5432 held connection: %v", be, err)
	}
	vdir := filepath.Join(cluster.Dir(name), "nodes", victim)
	switch agents {
	case cluster.AgentsDaemonSet:
		sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=agent", FieldSelector: "spec.nodeName=" + victim}
		ps, err := cs.CoreV1().Pods("kube-system").List(ctx, sel)
		if err != nil || len(ps.Items) != 1 {
			t.Fatalf("agent pod of %s: %v %v", victim, ps, err)
		}
		old := ps.Items[0].Name
		k.mustKubectl("delete", "pod", "-n", "kube-system", old, "--wait=false")
		k.eventually("agent pod "+old+" gone", func() (bool, string) {
			_, err := cs.CoreV1().Pods("kube-system").Get(ctx, old, metav1.GetOptions{})
			return err != nil && strings.Contains(err.Error(), "not found"), fmt.Sprint(err)
		})
	default:
		pid := proc.Pid(vdir, node.Agent)
		if pid == 0 || !proc.Alive(vdir, node.Agent) {
			t.Fatalf("no agent runs on %s", victim)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if !sandboxtest.Eventually(30*time.Second, func() bool { return !proc.Alive(vdir, node.Agent) }) {
			t.Fatalf("agent of %s (pid %d) survived SIGKILL", victim, pid)
		}
	}
	if err := held.echo("while the agent is away"); err != nil {
		t.Errorf("agent of %s away: the established %s -> database:5432 connection: %v", victim, be, err)
	}
	if ok, out := allPairs(true)(); !ok {
		t.Errorf("agent of %s away: allowed frontend -> backend paths closed:\n%s", victim, out)
	}
	for _, b := range backends {
		if ok, out := k.tcpConnect("demo", b.Name, "database", "5432"); !ok {
			t.Errorf("agent of %s away: %s -> database:5432 closed\n%s", victim, b.Name, out)
		}
	}
	for _, f := range frontends {
		if ok, out := k.tcpConnect("demo", f.Name, db.Status.PodIP, "5432"); ok {
			t.Errorf("agent of %s away: %s -> database:5432 open\n%s", victim, f.Name, out)
		}
	}
	switch agents {
	case cluster.AgentsDaemonSet:
		k.mustKubectl("rollout", "status", "daemonset/bulwark", "-n", "kube-system", "--timeout=180s")
	default:
		if _, err := proc.Restart(vdir, node.Agent); err != nil {
			t.Fatal(err)
		}
	}
	k.waitEnforcing("cnp", "demo", "backend-egress-to-database", nodes)
	if err := held.echo("after the agent is back"); err != nil {
		t.Errorf("the established %s -> database:5432 connection after the agent of %s is back: %v", be, victim, err)
	}
	// The restarted agent enforces a change: without the backend's egress
	// allowance, backend -> database closes on every node.
	k.mustKubectl("delete", "cnp", "-n", "demo", "backend-egress-to-database")
	for _, b := range backends {
		b := b
		k.eventually(b.Name+" -> database:5432 closed after the egress allowance is deleted", func() (bool, string) {
			ok, out := k.tcpConnect("demo", b.Name, "database", "5432")
			return !ok, out
		})
	}
	k.waitEnforcing("cnp", "demo", "frontend-egress-to-backend", nodes)
	if ok, out := allPairs(true)(); !ok {
		t.Errorf("after the agent's restart: frontend -> backend closed:\n%s", out)
	}

	// Step 5: the article's CiliumClusterwideNetworkPolicy: every pod of
	// every namespace gets egress only to addresses outside the cluster.
	// Two pods in a namespace without policies, one per node, lose their
	// pod-to-pod egress; the demo's allowances still apply.
	k.mustKubectl("create", "namespace", "probe")
	for i, n := range nodes {
		manifest := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: probe-%d, namespace: probe, labels: {app: probe}}
spec:
  nodeName: %s
  containers: [{name: web, image: "nginx:alpine"}]
`, i+1, n)
		cmd := exec.Command(kubectlBin, "apply", "-f", "-")
		cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
		cmd.Stdin = strings.NewReader(manifest)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("probe pod on %s: %v\n%s", n, err, out)
		}
	}
	k.mustKubectl("wait", "--for=condition=Ready", "pods", "--all", "-n", "probe", "--timeout=120s")
	p2, err := cs.CoreV1().Pods("probe").Get(ctx, "probe-2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	probeURL := "http://" + p2.Status.PodIP + ":80/"
	k.eventually("probe-1 -> probe-2 across nodes without policies", func() (bool, string) {
		return k.httpGet("probe", "probe-1", probeURL, "probe-2")
	})
	k.mustKubectl("apply", "-f", k.seed("clusterwide-policy.yaml"))
	k.waitEnforcing("ccnp", "", "global-deny-external-access", nodes)
	out = k.mustKubectl("get", "ccnp")
	for _, want := range []string{"global-deny-external-access", "allow-internet-for-egress-namespace"} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl get ccnp lacks %s:\n%s", want, out)
		}
	}
	k.eventually("probe-1 -> probe-2 blocked by the clusterwide policy", func() (bool, string) {
		ok, out := k.httpGet("probe", "probe-1", probeURL, "probe-2")
		return !ok, out
	})
	if ok, out := allPairs(true)(); !ok {
		t.Errorf("with the clusterwide policy: frontend -> backend closed:\n%s", out)
	}
	k.mustKubectl("delete", "-f", k.seed("clusterwide-policy.yaml"))
	k.eventually("probe-1 -> probe-2 open again without the clusterwide policy", func() (bool, string) {
		return k.httpGet("probe", "probe-1", probeURL, "probe-2")
	})

	// Identities are the cluster's: every agent numbered through the same
	// CiliumIdentity objects.
	out = k.mustKubectl("get", "ciliumidentities", "-o", "name")
	ids := strings.Fields(out)
	sort.Strings(ids)
	if len(ids) < 4 {
		t.Errorf("kubectl get ciliumidentities: %d, want one per label set (>= 4):\n%s", len(ids), out)
	}
}
