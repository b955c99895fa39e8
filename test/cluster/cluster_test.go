// Package cluster_test brings a real two-node Kubernetes cluster up on this
// machine with `bulwark cluster up`, runs the seed's sample app on it and
// checks pod networking, Services and the cluster DNS through kubectl, then
// removes it with `bulwark cluster down` and checks nothing is left.
//
// It needs root and the binaries of scripts/kube-binaries.sh (runc and a
// static busybox from scripts/setup.sh); it skips without them, except
// under CI=true where that fails.
package cluster_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/bulwark-net/bulwark/internal/cluster"
	"github.com/bulwark-net/bulwark/internal/cluster/controlplane"
	"github.com/bulwark-net/bulwark/internal/cluster/network"
	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
	"github.com/bulwark-net/bulwark/test/sandboxtest"
)

func TestMain(m *testing.M) { sandboxtest.Main(m) }

func need(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	var err error
	if err = controlplane.CheckBinaries(controlplane.DefaultBinDir(), "etcd", "kube-apiserver", "kube-controller-manager",
		"kube-scheduler", "kubelet", "kube-proxy", "kubectl", "containerd", "containerd-shim-runc-v2", "ctr", "coredns",
		"cni/ptp", "cni/host-local", "cni/loopback"); err == nil {
		if _, lerr := exec.LookPath("runc"); lerr != nil {
			err = fmt.Errorf("runc not installed (scripts/setup.sh)")
		} else if _, serr := os.Stat("/bin/busybox"); serr != nil {
			err = fmt.Errorf("busybox-static not installed (scripts/setup.sh)")
		}
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
}

func uniqueName(t *testing.T) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "t" + hex.EncodeToString(b)[:7]
}

func bulwark(t *testing.T, ctx context.Context, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, sandboxtest.Binary(), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// env parses `bulwark cluster env` into KUBECONFIG and the kubectl dir.
func env(t *testing.T, name string) (kubeconfig, kubectl string) {
	t.Helper()
	out, err := bulwark(t, context.Background(), "cluster", "env", "--name", name)
	if err != nil {
		t.Fatalf("cluster env: %v\n%s", err, out)
	}
	s := bufio.NewScanner(strings.NewReader(out))
	for s.Scan() {
		l := s.Text()
		if v, ok := strings.CutPrefix(l, "export KUBECONFIG="); ok {
			kubeconfig = v
		}
		if v, ok := strings.CutPrefix(l, "export PATH="); ok {
			kubectl = filepath.Join(strings.TrimSuffix(v, ":$PATH"), "kubectl")
		}
	}
	if kubeconfig == "" || kubectl == "" {
		t.Fatalf("cluster env printed %q", out)
	}
	return kubeconfig, kubectl
}

// leftovers lists what of cluster name still exists on the machine.
func leftovers(name string) []string {
	var left []string
	dir := cluster.Dir(name)
	if _, err := os.Stat(dir); err == nil {
		left = append(left, "state dir "+dir)
	}
	ents, _ := os.ReadDir(netns.Dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "bwc-"+name+"-") {
			left = append(left, "netns "+e.Name())
		}
	}
	pins, _ := filepath.Glob("/sys/fs/bpf/bulwark/" + name + "-*")
	for _, p := range pins {
		left = append(left, "bpffs pins "+p)
	}
	if _, err := os.Stat("/sys/class/net/" + network.HostIf(name)); err == nil {
		left = append(left, "link "+network.HostIf(name))
	}
	cgs, _ := filepath.Glob("/sys/fs/cgroup/*/bulwark-cluster-" + name)
	cgs2, _ := filepath.Glob("/sys/fs/cgroup/bulwark-cluster-" + name)
	for _, c := range append(cgs, cgs2...) {
		left = append(left, "cgroup "+c)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, dir+"/") || strings.Contains(l, dir+" ") {
			left = append(left, "mount "+l)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, []byte(dir+"/")) {
			left = append(left, "process "+p+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return left
}

// hostTunables reads the host settings every kubelet changes.
func hostTunables() string {
	var vals []string
	for _, k := range []string{"vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops", "kernel/keys/root_maxkeys"} {
		b, _ := os.ReadFile("/proc/sys/" + k)
		vals = append(vals, k+"="+strings.TrimSpace(string(b)))
	}
	return strings.Join(vals, " ")
}

func TestClusterUpTwoNodesSampleApp(t *testing.T) {
	need(t)
	name := uniqueName(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	clusterUp(t, ctx, name, "ptp", "", nil)

	kubeconfig, kubectlBin := env(t, name)
	kubectl := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, kubectlBin, args...)
		cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
		var o bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &o
		err := cmd.Run()
		return o.String(), err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Items) != 2 {
		t.Fatalf("%d nodes, want 2", len(nodes.Items))
	}
	for _, n := range nodes.Items {
		ready := false
		for _, c := range n.Status.Conditions {
			ready = ready || (c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue)
		}
		if !ready {
			t.Errorf("node %s not Ready: %+v", n.Name, n.Status.Conditions)
		}
	}

	if out, err := kubectl("-n", "demo", "rollout", "status", "deploy/frontend", "deploy/backend", "deploy/database", "--timeout=4m"); err != nil {
		o2, _ := kubectl("-n", "demo", "get", "pods", "-o", "wide")
		o3, _ := kubectl("-n", "demo", "get", "events")
		t.Fatalf("rollout: %v\n%s\n%s\n%s", err, out, o2, o3)
	}
	pods, err := cs.CoreV1().Pods("demo").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	onNode := map[string]bool{}
	var frontends, backends []corev1.Pod
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodRunning {
			continue
		}
		onNode[p.Spec.NodeName] = true
		switch p.Labels["app"] {
		case "frontend":
			frontends = append(frontends, p)
		case "backend":
			backends = append(backends, p)
		}
	}
	if len(onNode) != 2 {
		t.Errorf("sample app pods run on %v, want both nodes", onNode)
	}

	// Through the cluster DNS and the backend Service (kube-proxy).
	out, err := kubectl("-n", "demo", "exec", "deploy/frontend", "--", "wget", "-qO-", "http://backend:8080")
	if err != nil || !strings.Contains(out, "pod=backend-") {
		t.Errorf("wget http://backend:8080 from frontend: %v\n%s", err, out)
	}
	svc, err := cs.CoreV1().Services("demo").Get(ctx, "backend", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out, err = kubectl("-n", "demo", "exec", "deploy/frontend", "--", "getent", "hosts", "backend.demo.svc.cluster.local")
	if err != nil || !strings.Contains(out, svc.Spec.ClusterIP) {
		t.Errorf("getent hosts backend: %v\n%s (want %s)", err, out, svc.Spec.ClusterIP)
	}
	out, err = kubectl("-n", "demo", "exec", "deploy/frontend", "--", "sh", "-c", "echo | nc -w 2 database 5432")
	if err != nil || !strings.Contains(out, "pod=database-") {
		t.Errorf("nc database 5432 from frontend: %v\n%s", err, out)
	}
	// The seed article's commands, as written.
	out, err = kubectl("exec", "-n", "demo", "deploy/backend", "--", "nc", "-zv", "database", "5432")
	if err != nil || !strings.Contains(out, "succeeded") {
		t.Errorf("nc -zv database 5432 from backend: %v\n%s", err, out)
	}
	out, err = kubectl("exec", "-n", "demo", "deploy/frontend", "--", "wget", "--timeout=5", "-q", "-O-", "http://backend:8080")
	if err != nil || !strings.Contains(out, "pod=backend-") {
		t.Errorf("wget --timeout=5 http://backend:8080 from frontend: %v\n%s", err, out)
	}
	out, err = kubectl("exec", "-n", "demo", "deploy/frontend", "--", "nc", "-zv", "-w", "2", "database", "5433")
	if err == nil || !strings.Contains(out, "failed") {
		t.Errorf("nc -zv database 5433 (nothing listens) succeeded: %v\n%s", err, out)
	}
	// Pod to pod, every frontend to every backend: across nodes whenever
	// they are on different ones (native routing between the nodes).
	for _, f := range frontends {
		for _, b := range backends {
			out, err := kubectl("-n", "demo", "exec", f.Name, "--", "wget", "-qO-", "http://"+b.Status.PodIP+":8080/")
			if err != nil || !strings.Contains(out, "pod="+b.Name) {
				t.Errorf("%s (%s) -> %s (%s, %s): %v\n%s", f.Name, f.Spec.NodeName, b.Name, b.Spec.NodeName, b.Status.PodIP, err, out)
			}
		}
	}
}

// clusterUp brings cluster name up with two nodes, the pod network cni
// (with Bulwark's agents run as agents says, "" for ptp) and the seed's
// sample app, and takes it down when the test ends, checking
// that nothing of it is left and, after the last cluster, that the host's
// kernel tunables are as before. onFailure (if any) runs before the down
// when the test failed.
func clusterUp(t *testing.T, ctx context.Context, name, cni, agents string, onFailure func()) {
	t.Helper()
	root, err := sandboxtest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	sysctlsBefore := hostTunables()
	t.Cleanup(func() {
		if t.Failed() && onFailure != nil {
			onFailure()
		}
		out, err := bulwark(t, context.Background(), "cluster", "down", "--name", name)
		if others, _ := filepath.Glob(filepath.Join(cluster.BaseDir, "*")); len(others) == 0 {
			if after := hostTunables(); after != sysctlsBefore {
				t.Errorf("kernel tunables after the last cluster went down: %q, before: %q", after, sysctlsBefore)
			}
		}
		if err != nil {
			t.Errorf("cluster down: %v\n%s", err, out)
		}
		if left := leftovers(name); len(left) > 0 {
			t.Errorf("left behind after cluster down:\n%s", strings.Join(left, "\n"))
		}
	})
	start := time.Now()
	args := []string{"cluster", "up", "--name", name, "--nodes", "2", "--cni", cni,
		"-f", filepath.Join(root, "testdata", "seed", "sample-app.yaml")}
	if agents != "" {
		args = append(args, "--agents", agents)
	}
	out, err := bulwark(t, ctx, args...)
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("%s took %s", strings.Join(args[:8], " ")+" "+agents, time.Since(start).Round(100*time.Millisecond))
}
