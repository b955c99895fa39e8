// Package node runs one Kubernetes node of a one-machine cluster: a
// containerd (CRI, runc, CNI) and a kubelet, both started inside the node's
// network namespace so the pods' CNI veths, the kubelet's node IP and its
// port 10250 all live there, plus kube-proxy for Services in the same
// namespace. Every state file, socket and mount is below the node's
// directory; the pods' cgroups are below the node's cgroup root; so
// several nodes (and several clusters) share the machine without meeting.
package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/bulwark-net/bulwark/internal/cluster/cgroup"
	"github.com/bulwark-net/bulwark/internal/cluster/controlplane"
	"github.com/bulwark-net/bulwark/internal/cluster/image"
	"github.com/bulwark-net/bulwark/internal/cluster/proc"
)

// Process names (pid and log files in the node directory).
const (
	Containerd = "containerd"
	Kubelet    = "kubelet"
	KubeProxy  = "kube-proxy"
	Agent      = "bulwark-agent"
)

// Config describes one node.
type Config struct {
	Name        string
	Dir         string // the node's state directory
	Netns       string // path of its network namespace
	IP          netip.Addr
	BinDir      string // Kubernetes binaries (kube-binaries.sh)
	Runc        string
	ClusterCIDR netip.Prefix
	ClusterDNS  netip.Addr
	// Hierarchies, CgroupRoot (the kubelet's --cgroup-root) and
	// DaemonCgroup (where containerd, kubelet and kube-proxy run) are
	// cgroup paths relative to each hierarchy's mount.
	Hierarchies  []cgroup.Hierarchy
	CgroupRoot   string
	DaemonCgroup string
	Images       string // OCI image tarball to import (internal/cluster/image)
	CP           *controlplane.ControlPlane
}

// Paths inside the node directory.
func (c Config) sock() string        { return filepath.Join(c.Dir, "containerd", "containerd.sock") }
func (c Config) CNIConfDir() string  { return filepath.Join(c.Dir, "cni", "net.d") }
func (c Config) CNIBinDir() string   { return filepath.Join(c.Dir, "cni", "bin") }
func (c Config) Kubeconfig() string  { return filepath.Join(c.Dir, "kubelet.kubeconfig") }
func (c Config) kubeletDir() string  { return filepath.Join(c.Dir, "kubelet") }
func (c Config) proxyConfig() string { return filepath.Join(c.Dir, "kube-proxy.yaml") }

// RuntimeEndpoint is the node's CRI socket.
func (c Config) RuntimeEndpoint() string { return "unix://" + c.sock() }

func (c Config) start(name, bin string, args ...string) error {
	_, err := proc.Start(proc.Spec{Name: name, Dir: c.Dir, Bin: bin, Args: args, Netns: c.Netns,
		CgroupProcs: cgroup.ProcsFiles(c.Hierarchies, c.DaemonCgroup)})
	return err
}

// Start writes the node's configuration, starts containerd, imports the
// images, then starts the kubelet and kube-proxy. It returns once they
// run; the node becomes Ready when its CNI configuration is written
// (WritePtpConfig, or the Bulwark agent).
func Start(ctx context.Context, c Config) error {
	for _, d := range []string{c.CNIConfDir(), c.CNIBinDir(), c.kubeletDir(), filepath.Join(c.Dir, "pod-logs"),
		filepath.Join(c.Dir, "containerd")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := linkCNIPlugins(filepath.Join(c.BinDir, "cni"), c.CNIBinDir()); err != nil {
		return err
	}
	if err := c.writeContainerdConfig(); err != nil {
		return err
	}
	if err := c.start(Containerd, filepath.Join(c.BinDir, "containerd"), "--config", filepath.Join(c.Dir, "containerd.toml")); err != nil {
		return err
	}
	if err := c.waitSocket(ctx, 60*time.Second); err != nil {
		return err
	}
	if err := c.importImages(ctx); err != nil {
		return err
	}
	if err := c.writeKubeletFiles(); err != nil {
		return err
	}
	if err := c.start(Kubelet, filepath.Join(c.BinDir, "kubelet"),
		"--config="+filepath.Join(c.Dir, "kubelet.yaml"),
		"--kubeconfig="+c.Kubeconfig(),
		"--hostname-override="+c.Name,
		"--node-ip="+c.IP.String(),
		"--root-dir="+c.kubeletDir(),
		"--cert-dir="+filepath.Join(c.Dir, "kubelet-pki"),
		"--v=1"); err != nil {
		return err
	}
	if err := c.writeProxyFiles(); err != nil {
		return err
	}
	return c.start(KubeProxy, filepath.Join(c.BinDir, "kube-proxy"), "--config="+c.proxyConfig(), "--v=1")
}

// linkCNIPlugins links every plugin of the cache into the node's CNI bin
// directory (bulwark-cni is added beside them when Bulwark is the CNI).
func linkCNIPlugins(from, to string) error {
	ents, err := os.ReadDir(from)
	if err != nil {
		return fmt.Errorf("CNI plugins: %w (build them with scripts/kube-binaries.sh)", err)
	}
	for _, e := range ents {
		if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		dst := filepath.Join(to, e.Name())
		_ = os.Remove(dst)
		if err := os.Symlink(filepath.Join(from, e.Name()), dst); err != nil {
			return err
		}
	}
	return nil
}

// InstallCNIPlugin copies a plugin binary (bulwark-cni) into the node's
// CNI bin directory.
func (c Config) InstallCNIPlugin(src string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("CNI plugin: %w", err)
	}
	dst := filepath.Join(c.CNIBinDir(), filepath.Base(src))
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

func (c Config) writeContainerdConfig() error {
	d := filepath.Join(c.Dir, "containerd")
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	cfg := `version = 3
root = ` + q(filepath.Join(d, "root")) + `
state = ` + q(filepath.Join(d, "state")) + `
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = ` + q(c.sock()) + `

[ttrpc]
  address = ` + q(c.sock()+".ttrpc") + `

[debug]
  address = ""
  level = "warn"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = ` + q(filepath.Join(d, "opt")) + `
  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = ` + q(image.Pause) + `
  [plugins."io.containerd.cri.v1.runtime"]
    netns_mounts_under_state_dir = true
    # Lowering oom_score_adj needs CAP_SYS_RESOURCE, which root may lack
    # (a sandboxed machine): clamp to containerd's own value instead of
    # failing every container with "can't get final child's PID".
    restrict_oom_score_adj = true
    [plugins."io.containerd.cri.v1.runtime".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
          BinaryName = ` + q(c.Runc) + `
          Root = ` + q(filepath.Join(d, "runc")) + `
          SystemdCgroup = false
    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = [` + q(c.CNIBinDir()) + `]
      conf_dir = ` + q(c.CNIConfDir()) + `
      max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri"]
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
`
	return os.WriteFile(filepath.Join(c.Dir, "containerd.toml"), []byte(cfg), 0o644)
}

func (c Config) waitSocket(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(c.sock()); err == nil {
			return nil
		}
		if !proc.Alive(c.Dir, Containerd) {
			return fmt.Errorf("node %s: containerd exited: %s", c.Name, proc.LogTail(c.Dir, Containerd, 5))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s: containerd socket %s did not appear: %s", c.Name, c.sock(), proc.LogTail(c.Dir, Containerd, 5))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// importImages loads the image tarball into the CRI's namespace (k8s.io).
func (c Config) importImages(ctx context.Context) error {
	ctr := filepath.Join(c.BinDir, "ctr")
	cmd := exec.CommandContext(ctx, ctr, "--address", c.sock(), "--namespace", "k8s.io", "images", "import", c.Images)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("node %s: import images: %v: %s", c.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (c Config) writeKubeletFiles() error {
	pki := c.CP.PKI
	cert, key, err := pki.Issue("kubelet-"+c.Name, "system:node:"+c.Name, []string{"system:nodes"}, nil)
	if err != nil {
		return err
	}
	if err := c.CP.WriteKubeconfig(c.Kubeconfig(), "system:node:"+c.Name, cert, key); err != nil {
		return err
	}
	scert, skey, err := pki.Issue("kubelet-serving-"+c.Name, "system:node:"+c.Name, []string{"system:nodes"},
		[]string{c.IP.String(), c.Name})
	if err != nil {
		return err
	}
	// The pods' resolv.conf gets the cluster DNS and search list only,
	// nothing of the host's.
	resolv := filepath.Join(c.Dir, "resolv.conf")
	if err := os.WriteFile(resolv, nil, 0o644); err != nil {
		return err
	}
	cfg := map[string]any{
		"apiVersion": "kubelet.config.k8s.io/v1beta1",
		"kind":       "KubeletConfiguration",
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": false},
			"webhook":   map[string]any{"enabled": true},
			"x509":      map[string]any{"clientCAFile": pki.CAFile()},
		},
		"authorization":               map[string]any{"mode": "Webhook"},
		"address":                     c.IP.String(),
		"port":                        10250,
		"readOnlyPort":                0,
		"healthzBindAddress":          "127.0.0.1",
		"healthzPort":                 10248,
		"tlsCertFile":                 scert,
		"tlsPrivateKeyFile":           skey,
		"containerRuntimeEndpoint":    c.RuntimeEndpoint(),
		"cgroupDriver":                "cgroupfs",
		"cgroupRoot":                  c.CgroupRoot,
		"cgroupsPerQOS":               true,
		"failSwapOn":                  false,
		"failCgroupV1":                false,
		"clusterDNS":                  []string{c.ClusterDNS.String()},
		"clusterDomain":               "cluster.local",
		"resolvConf":                  resolv,
		"podLogsDir":                  filepath.Join(c.Dir, "pod-logs"),
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"imageMinimumGCAge":           "87600h",
		"evictionHard": map[string]string{
			"memory.available": "1Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%",
			"imagefs.available": "1%", "imagefs.inodesFree": "1%",
		},
		"kubeAPIQPS":                    20,
		"kubeAPIBurst":                  40,
		"serializeImagePulls":           false,
		"protectKernelDefaults":         false,
		"maxPods":                       110,
		"nodeStatusReportFrequency":     "1m",
		"syncFrequency":                 "30s",
		"fileCheckFrequency":            "20s",
		"runtimeRequestTimeout":         "2m",
		"localStorageCapacityIsolation": true,
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(c.Dir, "kubelet.yaml"), b, 0o644)
}

func (c Config) writeProxyFiles() error {
	cert, key, err := c.CP.PKI.Issue("kube-proxy", "system:kube-proxy", nil, nil)
	if err != nil {
		return err
	}
	kc := filepath.Join(c.Dir, "kube-proxy.kubeconfig")
	if err := c.CP.WriteKubeconfig(kc, "system:kube-proxy", cert, key); err != nil {
		return err
	}
	cfg := map[string]any{
		"apiVersion":         "kubeproxy.config.k8s.io/v1alpha1",
		"kind":               "KubeProxyConfiguration",
		"clientConnection":   map[string]any{"kubeconfig": kc, "qps": 10, "burst": 20},
		"hostnameOverride":   c.Name,
		"bindAddress":        "0.0.0.0",
		"clusterCIDR":        c.ClusterCIDR.String(),
		"mode":               "iptables",
		"conntrack":          map[string]any{"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
		"metricsBindAddress": "127.0.0.1:10249",
		"healthzBindAddress": "127.0.0.1:10256",
		"oomScoreAdj":        0, // -999 needs CAP_SYS_RESOURCE
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(c.proxyConfig(), b, 0o644)
}

// WritePtpConfig writes the node's CNI configuration for the standard ptp
// plugin with host-local IPAM on the node's pod CIDR (IPAM state in the
// node directory).
func (c Config) WritePtpConfig(podCIDR netip.Prefix) error {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "bulwark-cluster",
		"plugins": []any{
			map[string]any{
				"type": "ptp", "ipMasq": false, "mtu": 1500,
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  [][]map[string]string{{{"subnet": podCIDR.String()}}},
					"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
					"dataDir": filepath.Join(c.Dir, "cni", "ipam"),
				},
			},
		},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(c.CNIConfDir(), "10-ptp.conflist"), b)
}

func writeAtomic(p string, b []byte) error {
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// Healthy reports a node process that has exited, with its log's tail.
func (c Config) Healthy() error {
	var errs []error
	for _, n := range []string{Containerd, Kubelet, KubeProxy} {
		if proc.Pid(c.Dir, n) != 0 && !proc.Alive(c.Dir, n) {
			errs = append(errs, fmt.Errorf("node %s: %s exited: %s", c.Name, n, proc.LogTail(c.Dir, n, 3)))
		}
	}
	return errors.Join(errs...)
}

// Stop stops the node's processes (agent, kube-proxy, kubelet, then
// containerd). The containers and shims left are ended with the cluster's
// cgroup (internal/cluster/cgroup.Destroy).
func Stop(dir string) {
	for _, n := range []string{Agent, KubeProxy, Kubelet, Containerd} {
		_ = proc.Stop(dir, n, 5*time.Second)
	}
}
