// Package cluster brings a real Kubernetes cluster up on this one machine
// and down again (`bulwark cluster up|env|down`): the control plane (etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler) in the cluster's
// own network namespace, which also holds the cluster switch, and N nodes,
// each a network namespace with containerd, a kubelet and kube-proxy (see
// internal/cluster/node), pods networked by the standard ptp CNI plugin or
// by Bulwark's agent and CNI plugin, and CoreDNS as the cluster DNS. The
// images are built locally (internal/cluster/image); nothing is pulled.
//
// Everything a cluster owns is recorded under Dir(name) (state.json), or
// named after the cluster (namespaces bwc-NAME-*, host veth bwc-NAME,
// cgroups bulwark-cluster-NAME), so Down removes exactly that.
package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"golang.org/x/sys/unix"

	"github.com/bulwark-net/bulwark/internal/agent"
	"github.com/bulwark-net/bulwark/internal/cluster/addons"
	"github.com/bulwark-net/bulwark/internal/cluster/cgroup"
	"github.com/bulwark-net/bulwark/internal/cluster/controlplane"
	"github.com/bulwark-net/bulwark/internal/cluster/image"
	"github.com/bulwark-net/bulwark/internal/cluster/network"
	"github.com/bulwark-net/bulwark/internal/cluster/node"
	"github.com/bulwark-net/bulwark/internal/cluster/proc"
	"github.com/bulwark-net/bulwark/internal/cni"
	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
)

// BaseDir holds every cluster's state directory.
const BaseDir = "/var/lib/bulwark/cluster"

// CNI choices.
const (
	CNIPtp     = "ptp"
	CNIBulwark = "bulwark"
	// CNIBulwarkChained: Bulwark's plugin chained after ptp + host-local
	// (the agent writes that chain).
	CNIBulwarkChained = "bulwark-chained"
)

// Dir is cluster name's state directory.
func Dir(name string) string { return filepath.Join(BaseDir, name) }

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,9}[a-z0-9])?$`)

// ValidateName checks a cluster name: it names host interfaces (at most 15
// characters with the "bwc-" prefix), so a DNS label of at most 11.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("cluster name %q: use 1-11 lowercase letters, digits or '-', starting and ending with a letter or digit", name)
	}
	return nil
}

// Options configure Up.
type Options struct {
	Name       string
	Nodes      int
	CNI        string // CNIPtp (default), CNIBulwark or CNIBulwarkChained
	BinDir     string // Kubernetes binaries (default controlplane.DefaultBinDir())
	Bulwark    string // bulwark executable (default: this one); runs in the images and as the agent
	BulwarkCNI string // bulwark-cni (default: beside Bulwark)
	// Agents is how --cni bulwark[-chained] runs the agents:
	// AgentsDaemonSet (default) or AgentsProcess.
	Agents      string
	Busybox     string // static busybox (default /bin/busybox)
	Runc        string // runc (default: from PATH)
	Manifests   []string
	ClusterCIDR netip.Prefix // default 10.244.0.0/16
	ServiceCIDR netip.Prefix // default 10.96.0.0/16
	Timeout     time.Duration
	// KeepOnFailure leaves a cluster that failed to come up in place
	// (logs, processes) for inspection; Down removes it.
	KeepOnFailure bool
	Log           func(format string, args ...any)
}

// NodeState is one node as recorded.
type NodeState struct {
	Name    string       `json:"name"`
	IP      netip.Addr   `json:"ip"`
	PodCIDR netip.Prefix `json:"podCIDR,omitzero"`
}

// State is what Up records for Env and Down.
type State struct {
	Name        string       `json:"name"`
	CNI         string       `json:"cni"`
	Agents      string       `json:"agents,omitempty"`
	BinDir      string       `json:"binDir"`
	Subnet      netip.Prefix `json:"subnet,omitzero"`
	ClusterCIDR netip.Prefix `json:"clusterCIDR"`
	ServiceCIDR netip.Prefix `json:"serviceCIDR"`
	Server      string       `json:"server,omitempty"`
	Kubeconfig  string       `json:"kubeconfig,omitempty"`
	Nodes       []NodeState  `json:"nodes"`
}

func statePath(name string) string { return filepath.Join(Dir(name), "state.json") }

func (s *State) save() error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := statePath(s.Name) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, statePath(s.Name))
}

// Load reads cluster name's recorded state.
func Load(name string) (*State, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(statePath(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no cluster %q (no %s); start one with: bulwark cluster up --name %s", name, statePath(name), name)
	}
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", statePath(name), err)
	}
	return &s, nil
}

// NodeDir is node's state directory in cluster name.
func NodeDir(name, node string) string { return filepath.Join(Dir(name), "nodes", node) }

// NodeAgent is where the Bulwark agent of a node (--cni bulwark) keeps its
// files: the roots of its agent.Paths.
type NodeAgent struct {
	Instance  string // agent instance name: <cluster>-<node>
	RunRoot   string // its run directory's parent (sockets: the Hubble one too)
	StateRoot string // its state directory's parent
}

// NodeAgentOf returns node's agent locations in cluster name.
func NodeAgentOf(name, node string) NodeAgent {
	dir := NodeDir(name, node)
	return NodeAgent{Instance: name + "-" + node, RunRoot: filepath.Join(dir, "bulwark-run"), StateRoot: filepath.Join(dir, "bulwark-state")}
}

// KubectlDir is the directory Env puts on PATH (it holds kubectl only).
func KubectlDir(name string) string { return filepath.Join(Dir(name), "bin") }

// Env is the shell text `bulwark cluster env` prints.
func Env(name string) (string, error) {
	s, err := Load(name)
	if err != nil {
		return "", err
	}
	if s.Kubeconfig == "" {
		return "", fmt.Errorf("cluster %q is not up (its control plane never started); bulwark cluster down --name %s", name, name)
	}
	return fmt.Sprintf("export KUBECONFIG=%s\nexport PATH=%s:$PATH\n", s.Kubeconfig, KubectlDir(name)), nil
}

func cgroupBase(name string) string   { return "/bulwark-cluster-" + name }
func daemonCgroup(name string) string { return cgroupBase(name) + "/daemons" }
func nodeCgroup(name, n string) string {
	return cgroupBase(name) + "/" + n
}

// nodeName is node i's name (1-based).
func nodeName(i int) string { return fmt.Sprintf("node-%d", i) }

func (o *Options) defaults() error {
	if o.Name == "" {
		o.Name = "default"
	}
	if err := ValidateName(o.Name); err != nil {
		return err
	}
	if o.Nodes == 0 {
		o.Nodes = 1
	}
	if o.Nodes < 1 || o.Nodes > 50 {
		return fmt.Errorf("--nodes %d: between 1 and 50", o.Nodes)
	}
	switch o.CNI {
	case "":
		o.CNI = CNIPtp
	case CNIPtp, CNIBulwark, CNIBulwarkChained:
	default:
		return fmt.Errorf("--cni %q: use %q, %q or %q", o.CNI, CNIPtp, CNIBulwark, CNIBulwarkChained)
	}
	switch o.Agents {
	case "":
		if o.CNI != CNIPtp {
			o.Agents = AgentsDaemonSet
		}
	case AgentsDaemonSet, AgentsProcess:
		if o.CNI == CNIPtp {
			return fmt.Errorf("--agents %s: Bulwark's agents run with --cni %s or %s", o.Agents, CNIBulwark, CNIBulwarkChained)
		}
	default:
		return fmt.Errorf("--agents %q: use %q or %q", o.Agents, AgentsDaemonSet, AgentsProcess)
	}
	if o.BinDir == "" {
		o.BinDir = controlplane.DefaultBinDir()
	}
	if o.Bulwark == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		o.Bulwark = exe
	}
	if o.BulwarkCNI == "" {
		o.BulwarkCNI = filepath.Join(filepath.Dir(o.Bulwark), "bulwark-cni")
	}
	if o.Busybox == "" {
		o.Busybox = "/bin/busybox"
	}
	if o.Runc == "" {
		p, err := exec.LookPath("runc")
		if err != nil {
			return errors.New("runc not found in PATH (Debian: apt-get install runc; scripts/setup.sh does)")
		}
		o.Runc = p
	}
	if !o.ClusterCIDR.IsValid() {
		o.ClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	}
	if !o.ServiceCIDR.IsValid() {
		o.ServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")
	}
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Minute
	}
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	for _, m := range o.Manifests {
		if _, err := os.Stat(m); err != nil {
			return fmt.Errorf("-f %s: %w", m, err)
		}
	}
	if err := controlplane.CheckBinaries(o.BinDir, "etcd", "kube-apiserver", "kube-controller-manager",
		"kube-scheduler", "kubelet", "kube-proxy", "kubectl", "containerd", "containerd-shim-runc-v2", "ctr",
		"coredns", "cni/ptp", "cni/host-local", "cni/loopback"); err != nil {
		return err
	}
	if o.CNI != CNIPtp {
		if _, err := os.Stat(o.BulwarkCNI); err != nil {
			return fmt.Errorf("--cni %s needs the CNI plugin: %w (scripts/setup.sh builds bin/bulwark-cni)", o.CNI, err)
		}
	}
	for _, p := range []string{"nsenter", "iptables"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%s not found in PATH (Debian: util-linux, iptables)", p)
		}
	}
	return nil
}

// dnsIP is the cluster DNS Service address: the tenth of the range.
func dnsIP(svc netip.Prefix) netip.Addr {
	a := svc.Masked().Addr()
	for i := 0; i < 10; i++ {
		a = a.Next()
	}
	return a
}

// Up brings the cluster up and returns its state. On error everything it
// made is removed again.
func Up(ctx context.Context, o Options) (_ *State, err error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("bulwark cluster up needs root (network namespaces, cgroups, mounts)")
	}
	dir := Dir(o.Name)
	if _, err := os.Stat(dir); err == nil {
		return nil, fmt.Errorf("cluster %q exists (%s); remove it first with: bulwark cluster down --name %s", o.Name, dir, o.Name)
	}
	if err := saveHostTunables(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	st := &State{Name: o.Name, CNI: o.CNI, Agents: o.Agents, BinDir: o.BinDir, ClusterCIDR: o.ClusterCIDR, ServiceCIDR: o.ServiceCIDR}
	for i := 1; i <= o.Nodes; i++ {
		st.Nodes = append(st.Nodes, NodeState{Name: nodeName(i)})
	}
	if err := st.save(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && o.KeepOnFailure {
			err = fmt.Errorf("%w (left in place: logs in %s; remove with bulwark cluster down --name %s)", err, dir, o.Name)
		} else if err != nil {
			if derr := Down(o.Name); derr != nil {
				err = fmt.Errorf("%w (and removing the partial cluster: %v)", err, derr)
			}
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()

	// Network: the switch's subnet must not meet the host's or another
	// cluster's.
	subnet, err := network.FreeSubnet(otherSubnets(o.Name))
	if err != nil {
		return nil, err
	}
	st.Subnet = subnet
	for i := range st.Nodes {
		st.Nodes[i].IP = network.NodeIP(subnet, i+1)
	}
	if err := st.save(); err != nil {
		return nil, err
	}
	o.Log("network %s: control plane %s, nodes %s..", subnet, network.CPIP(subnet), st.Nodes[0].IP)
	if err := network.CreateSwitch(o.Name, subnet); err != nil {
		return nil, err
	}
	for _, n := range st.Nodes {
		if err := network.CreateNode(o.Name, n.Name, subnet, n.IP); err != nil {
			return nil, err
		}
	}

	hs, err := cgroup.Hierarchies()
	if err != nil {
		return nil, err
	}
	if err := cgroup.Create(hs, daemonCgroup(o.Name)); err != nil {
		return nil, err
	}
	for _, n := range st.Nodes {
		if err := cgroup.Create(hs, nodeCgroup(o.Name, n.Name)); err != nil {
			return nil, err
		}
	}

	// Images (built while the control plane starts).
	imgPath := filepath.Join(dir, "images.tar")
	imgErr := make(chan error, 1)
	go func() {
		imgOpts := image.Options{Busybox: o.Busybox, Bulwark: o.Bulwark, CoreDNS: filepath.Join(o.BinDir, "coredns")}
		if o.Agents == AgentsDaemonSet {
			imgOpts.BulwarkCNI = o.BulwarkCNI
		}
		_, err := image.BuildFile(imgPath, imgOpts)
		imgErr <- err
	}()

	o.Log("control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler")
	cp, err := controlplane.Start(ctx, controlplane.Options{
		BinDir: o.BinDir, Dir: filepath.Join(dir, "controlplane"),
		Address: network.CPIP(subnet), ServiceCIDR: o.ServiceCIDR, ClusterCIDR: o.ClusterCIDR, NodeCIDRMask: 24,
		ControllerManager: true, Scheduler: true, Netns: netns.Path(network.CPNetns(o.Name)), Detach: true,
		APIServerArgs:         []string{"--kubelet-preferred-address-types=InternalIP,Hostname"},
		ControllerManagerArgs: []string{"--node-monitor-grace-period=20s", "--kube-api-qps=50", "--kube-api-burst=100"},
	})
	if ierr := <-imgErr; ierr != nil && err == nil {
		err = fmt.Errorf("build images: %w", ierr)
	}
	if err != nil {
		return nil, err
	}
	st.Server, st.Kubeconfig = cp.Server, cp.Kubeconfig
	if err := st.save(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(KubectlDir(o.Name), 0o755); err != nil {
		return nil, err
	}
	if err := os.Symlink(filepath.Join(o.BinDir, "kubectl"), filepath.Join(KubectlDir(o.Name), "kubectl")); err != nil {
		return nil, err
	}
	cfg, err := cp.RESTConfig()
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}

	nodes := make([]node.Config, len(st.Nodes))
	for i, n := range st.Nodes {
		nodes[i] = node.Config{
			Name: n.Name, Dir: NodeDir(o.Name, n.Name), Netns: netns.Path(network.NodeNetns(o.Name, n.Name)),
			IP: n.IP, BinDir: o.BinDir, Runc: o.Runc, ClusterCIDR: o.ClusterCIDR, ClusterDNS: dnsIP(o.ServiceCIDR),
			Hierarchies: hs, CgroupRoot: nodeCgroup(o.Name, n.Name), DaemonCgroup: daemonCgroup(o.Name),
			Images: imgPath, CP: cp,
		}
	}
	o.Log("nodes: containerd, kubelet, kube-proxy on %d node(s)", len(nodes))
	var wg sync.WaitGroup
	errs := make([]error, len(nodes))
	for i := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = node.Start(ctx, nodes[i])
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	// Pod CIDRs: allocated by the controller-manager once a kubelet has
	// registered its node; every other namespace routes it via that node.
	for i := range st.Nodes {
		cidr, err := waitPodCIDR(ctx, cs, nodes[i])
		if err != nil {
			return nil, err
		}
		st.Nodes[i].PodCIDR = cidr
	}
	if err := st.save(); err != nil {
		return nil, err
	}
	for i, n := range st.Nodes {
		targets := []string{network.CPNetns(o.Name)}
		for j, m := range st.Nodes {
			if j != i {
				targets = append(targets, network.NodeNetns(o.Name, m.Name))
			}
		}
		for _, t := range targets {
			if err := network.RoutePodCIDR(t, n.PodCIDR, n.IP); err != nil {
				return nil, err
			}
		}
	}
	switch {
	case o.CNI == CNIPtp:
		for i, n := range st.Nodes {
			if err := nodes[i].WritePtpConfig(n.PodCIDR); err != nil {
				return nil, err
			}
		}
	case o.Agents == AgentsProcess:
		for i := range st.Nodes {
			if err := startAgent(cp, nodes[i], o); err != nil {
				return nil, err
			}
		}
	default:
		o.Log("Bulwark: the agent DaemonSet (deploy/manifests), its CRDs and RBAC")
		if err := applyAgents(ctx, cp, hs, o); err != nil {
			return nil, err
		}
	}

	o.Log("waiting for the nodes to be Ready")
	if err := waitNodesReady(ctx, cs, nodes); err != nil {
		return nil, err
	}
	o.Log("cluster DNS: CoreDNS")
	if err := addons.CoreDNS(ctx, cs, image.CoreDNS, dnsIP(o.ServiceCIDR)); err != nil {
		return nil, err
	}
	if err := waitDeployment(ctx, cs, "kube-system", "coredns", nodes); err != nil {
		return nil, err
	}
	for _, m := range o.Manifests {
		o.Log("applying %s", m)
		if err := kubectl(ctx, o, cp, "apply", "-f", m); err != nil {
			return nil, err
		}
	}
	return st, nil
}

// otherSubnets are the switch subnets of the other recorded clusters.
func otherSubnets(name string) []netip.Prefix {
	ents, _ := os.ReadDir(BaseDir)
	var out []netip.Prefix
	for _, e := range ents {
		if e.Name() == name {
			continue
		}
		if s, err := Load(e.Name()); err == nil && s.Subnet.IsValid() {
			out = append(out, s.Subnet)
		}
	}
	return out
}

// agentPinDir is where the agent of a cluster's node pins its datapath.
func agentPinDir(cluster, node string) string {
	return filepath.Join(agent.DefaultPinRoot, NodeAgentOf(cluster, node).Instance)
}

// applyAgents applies the shipped manifests, adapted to the cluster
// (agentManifest), with kubectl as a user would; the agent pods write each
// node's CNI configuration once they are ready.
func applyAgents(ctx context.Context, cp *controlplane.ControlPlane, hs []cgroup.Hierarchy, o Options) error {
	addr, err := netip.ParseAddrPort(strings.TrimPrefix(cp.Server, "https://"))
	if err != nil {
		return fmt.Errorf("API server address %q: %w", cp.Server, err)
	}
	m, err := agentManifest(o.Name, o.cniMode(), addr, cgroup.V2Path(hs, cgroupBase(o.Name)))
	if err != nil {
		return err
	}
	path := filepath.Join(Dir(o.Name), "bulwark.yaml")
	if err := os.WriteFile(path, m, 0o644); err != nil {
		return err
	}
	return kubectl(ctx, o, cp, "apply", "--server-side", "-f", path)
}

// kubectl runs the cluster's kubectl against its API server; an error
// carries the command and its output.
func kubectl(ctx context.Context, o Options, cp *controlplane.ControlPlane, args ...string) error {
	out, err := exec.CommandContext(ctx, filepath.Join(o.BinDir, "kubectl"), append([]string{"--kubeconfig", cp.Kubeconfig}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// cniMode is the agent's --cni-mode for --cni bulwark[-chained].
func (o Options) cniMode() string {
	if o.CNI == CNIBulwarkChained {
		return cni.ModeChained
	}
	return cni.ModeStandalone
}

// startAgent runs Bulwark's agent in Kubernetes mode on the node (in its
// network namespace), which writes the node's CNI configuration for
// bulwark-cni (installed into the node's CNI bin directory).
func startAgent(cp *controlplane.ControlPlane, n node.Config, o Options) error {
	if err := n.InstallCNIPlugin(o.BulwarkCNI); err != nil {
		return err
	}
	cert, key, err := cp.PKI.Issue("bulwark-agent-"+n.Name, "bulwark-agent:"+n.Name, []string{"system:masters"}, nil)
	if err != nil {
		return err
	}
	kc := filepath.Join(n.Dir, "bulwark-agent.kubeconfig")
	if err := cp.WriteKubeconfig(kc, "bulwark-agent:"+n.Name, cert, key); err != nil {
		return err
	}
	ag := NodeAgentOf(o.Name, n.Name)
	_, err = proc.Start(proc.Spec{Name: node.Agent, Dir: n.Dir, Bin: o.Bulwark, Netns: n.Netns,
		CgroupProcs: cgroup.ProcsFiles(n.Hierarchies, n.DaemonCgroup),
		// One agent per node on one machine: its own instance (socket,
		// pins, state) and IPAM directory; the CNI configuration it writes
		// names its socket.
		Args: []string{"agent", "--kubernetes", "--kubeconfig", kc, "--node-name", n.Name,
			"--instance", ag.Instance, "--run-dir", ag.RunRoot, "--state-root", ag.StateRoot,
			"--cni-conf", n.CNIConfDir(), "--cni-ipam-dir", filepath.Join(n.Dir, "cni", "ipam"),
			"--cni-mode", o.cniMode(), "--native-routing",
			// The node's pods are below its cgroup root: their ClusterIPs
			// are translated at the socket, before the egress policy.
			"--cgroup-root", cgroup.V2Path(n.Hierarchies, n.CgroupRoot)}})
	return err
}

func waitPodCIDR(ctx context.Context, cs kubernetes.Interface, n node.Config) (netip.Prefix, error) {
	for {
		nd, err := cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err == nil && nd.Spec.PodCIDR != "" {
			p, err := netip.ParsePrefix(nd.Spec.PodCIDR)
			if err != nil {
				return netip.Prefix{}, fmt.Errorf("node %s: podCIDR %q: %w", n.Name, nd.Spec.PodCIDR, err)
			}
			return p, nil
		}
		if herr := n.Healthy(); herr != nil {
			return netip.Prefix{}, herr
		}
		select {
		case <-ctx.Done():
			return netip.Prefix{}, fmt.Errorf("node %s never registered with a pod CIDR (last: %v); kubelet log: %s", n.Name, err,
				proc.LogTail(n.Dir, node.Kubelet, 5))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func ready(nd *corev1.Node) bool {
	for _, c := range nd.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func waitNodesReady(ctx context.Context, cs kubernetes.Interface, nodes []node.Config) error {
	for {
		notReady := []string{}
		for _, n := range nodes {
			nd, err := cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil || !ready(nd) {
				notReady = append(notReady, n.Name)
			}
			if herr := n.Healthy(); herr != nil {
				return herr
			}
		}
		if len(notReady) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nodes %v not Ready; kubelet log of %s: %s", notReady, notReady[0], proc.LogTail(nodes[0].Dir, node.Kubelet, 5))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func waitDeployment(ctx context.Context, cs kubernetes.Interface, ns, name string, nodes []node.Config) error {
	for {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil && d.Spec.Replicas != nil && d.Status.ObservedGeneration >= d.Generation &&
			d.Status.AvailableReplicas >= *d.Spec.Replicas && d.Status.UpdatedReplicas >= *d.Spec.Replicas {
			return nil
		}
		for _, n := range nodes {
			if herr := n.Healthy(); herr != nil {
				return herr
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("deployment %s/%s not available: %s", ns, name, podProblems(cs, ns))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// podProblems summarises the pods of ns that are not running (for errors).
func podProblems(cs kubernetes.Interface, ns string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, p := range pods.Items {
		s := p.Name + ": " + string(p.Status.Phase)
		for _, c := range p.Status.ContainerStatuses {
			if c.State.Waiting != nil {
				s += " " + c.State.Waiting.Reason + " " + c.State.Waiting.Message
			}
		}
		for _, c := range p.Status.Conditions {
			if c.Status != corev1.ConditionTrue && c.Message != "" {
				s += " " + c.Message
			}
		}
		out = append(out, s)
	}
	ev, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err == nil {
		for _, e := range ev.Items {
			if e.Type == corev1.EventTypeWarning {
				out = append(out, "event "+e.InvolvedObject.Name+": "+e.Reason+" "+e.Message)
			}
		}
	}
	if len(out) == 0 {
		return "no pods"
	}
	return strings.Join(out, "; ")
}

// Down removes cluster name entirely: processes, containers, mounts,
// network namespaces, host veth, cgroups and the state directory. It is
// safe on a partially created cluster and reports what it could not
// remove.
func Down(name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	dir := Dir(name)
	st, err := Load(name)
	if err != nil {
		if _, serr := os.Stat(dir); serr != nil {
			return err
		}
		st = &State{Name: name} // unreadable state: clean what is named after the cluster
	}
	var errs []error
	nodeDirs, _ := filepath.Glob(filepath.Join(dir, "nodes", "*"))
	for _, nd := range nodeDirs {
		node.Stop(nd)
		// A stopped agent leaves its pins for the next one; the cluster
		// is going away, so they go too (the node's interfaces go with
		// its network namespace).
		if err := os.RemoveAll(agentPinDir(name, filepath.Base(nd))); err != nil {
			errs = append(errs, err)
		}
	}
	// Shim sockets live outside the state directory: note them first.
	shimSockets := shimSocketFiles(dir)
	if err := controlplane.StopDir(filepath.Join(dir, "controlplane")); err != nil {
		errs = append(errs, err)
	}
	if hs, err := cgroup.Hierarchies(); err == nil {
		if err := cgroup.Destroy(hs, cgroupBase(name), 20*time.Second); err != nil {
			errs = append(errs, err)
		}
	} else {
		errs = append(errs, err)
	}
	for _, s := range shimSockets {
		_ = os.Remove(s)
	}
	if err := unmountBelow(dir); err != nil {
		errs = append(errs, err)
	}
	var nodes []string
	for _, n := range st.Nodes {
		nodes = append(nodes, n.Name)
	}
	for _, nd := range nodeDirs {
		if b := filepath.Base(nd); !contains(nodes, b) {
			nodes = append(nodes, b)
		}
	}
	if err := network.Delete(name, nodes); err != nil {
		errs = append(errs, err)
	}
	removeContainerLogLinks(dir)
	if len(errs) == 0 {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		} else if err := restoreHostTunables(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// shimSocketFiles reads the shims' socket addresses containerd recorded
// in its bundles (bootstrap.json, or address with older shims).
func shimSocketFiles(dir string) []string {
	var out []string
	bundles, _ := filepath.Glob(filepath.Join(dir, "nodes", "*", "containerd", "state", "io.containerd.runtime.v2.task", "*", "*"))
	for _, b := range bundles {
		var addr string
		if raw, err := os.ReadFile(filepath.Join(b, "bootstrap.json")); err == nil {
			var bs struct {
				Address string `json:"address"`
			}
			if json.Unmarshal(raw, &bs) == nil {
				addr = bs.Address
			}
		} else if raw, err := os.ReadFile(filepath.Join(b, "address")); err == nil {
			addr = strings.TrimSpace(string(raw))
		}
		addr = strings.TrimPrefix(addr, "unix://")
		if strings.HasPrefix(addr, "/run/containerd/s/") {
			out = append(out, addr)
		}
	}
	return out
}

// unmountBelow detaches every mount at or below dir, deepest first.
func unmountBelow(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var mps []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fl := strings.Fields(s.Text())
		if len(fl) < 5 {
			continue
		}
		mp := unescape(fl[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mps = append(mps, mp)
		}
	}
	f.Close()
	sort.Slice(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
	var errs []error
	for _, mp := range mps {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

// unescape undoes mountinfo's octal escapes (\040 for a space, ...).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeContainerLogLinks removes the kubelets' symlinks in
// /var/log/containers that point into dir.
func removeContainerLogLinks(dir string) {
	ents, _ := os.ReadDir("/var/log/containers")
	for _, e := range ents {
		p := filepath.Join("/var/log/containers", e.Name())
		if t, err := os.Readlink(p); err == nil && strings.HasPrefix(t, dir+"/") {
			_ = os.Remove(p)
		}
	}
}
