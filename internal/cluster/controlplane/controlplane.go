// Package controlplane runs a real Kubernetes control plane from the
// binaries scripts/kube-binaries.sh builds: etcd, kube-apiserver and,
// optionally, kube-controller-manager and kube-scheduler, with their own
// certificate authority and RBAC on. `bulwark cluster up` runs it inside the
// cluster's control-plane network namespace; the Kubernetes-mode tests run
// it on loopback (see internal/k8s/k8stest).
//
// Every process writes its log and pid file into the control plane's
// directory, so a control plane started by one process can be stopped by
// another (Stop with only the directory: StopDir).
package controlplane

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Version is the Kubernetes release the binaries are built from.
const Version = "v1.37.2"

// DefaultBinDir is where scripts/kube-binaries.sh puts the binaries
// (BULWARK_KUBE_BIN overrides it).
func DefaultBinDir() string {
	if d := os.Getenv("BULWARK_KUBE_BIN"); d != "" {
		return d
	}
	home := os.Getenv("HOME")
	if home == "" {
		home = "/root"
	}
	return filepath.Join(home, ".cache", "bulwark", "kube", Version, "bin")
}

// CheckBinaries reports which of the named binaries are missing in dir.
func CheckBinaries(dir string, names ...string) error {
	var missing []string
	for _, n := range names {
		if fi, err := os.Stat(filepath.Join(dir, n)); err != nil || fi.Mode()&0o111 == 0 {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("kubernetes binaries missing in %s: %s (build them with scripts/kube-binaries.sh)", dir, strings.Join(missing, ", "))
	}
	return nil
}

// Options configure Start.
type Options struct {
	BinDir string // default DefaultBinDir()
	Dir    string // state: pki, etcd data, logs, pid files, kubeconfigs (required)
	// Address is where the API server listens and what it advertises
	// (default 127.0.0.1). etcd always listens on loopback.
	Address netip.Addr
	// Ports; 0 picks a free port (with Netns: 6443, 2379 and 2380).
	APIPort, EtcdPort, EtcdPeerPort int
	// ServiceCIDR is the Services' ClusterIP range (default 10.96.0.0/16).
	ServiceCIDR netip.Prefix
	// ClusterCIDR, when valid, starts kube-controller-manager allocating
	// each node a /NodeCIDRMask of it (default mask 24).
	ClusterCIDR  netip.Prefix
	NodeCIDRMask int
	// ControllerManager and Scheduler start those components.
	ControllerManager bool
	Scheduler         bool
	// Netns, when set, is the network namespace (a path such as
	// /var/run/netns/NAME) the processes run in.
	Netns string
	// Detach starts the processes in their own session so they outlive
	// the caller (a CLI that exits); Stop or StopDir ends them.
	Detach bool
	// Timeout bounds the wait for the API server's readiness (default 90s).
	Timeout time.Duration
	// APIServerArgs and ControllerManagerArgs are appended to those
	// components' command lines.
	APIServerArgs, ControllerManagerArgs []string
}

// ControlPlane is a running control plane.
type ControlPlane struct {
	Dir         string
	PKI         *PKI
	Server      string // https://ADDRESS:PORT
	Kubeconfig  string // an admin (system:masters) kubeconfig
	ServiceCIDR netip.Prefix
}

// Start starts etcd and kube-apiserver (and the components opts asks for)
// and waits until the API server is ready. On error everything it started
// is stopped.
func Start(ctx context.Context, opts Options) (_ *ControlPlane, err error) {
	if opts.Dir == "" {
		return nil, errors.New("controlplane: Dir is required")
	}
	if opts.BinDir == "" {
		opts.BinDir = DefaultBinDir()
	}
	need := []string{"etcd", "kube-apiserver"}
	if opts.ControllerManager {
		need = append(need, "kube-controller-manager")
	}
	if opts.Scheduler {
		need = append(need, "kube-scheduler")
	}
	if err := CheckBinaries(opts.BinDir, need...); err != nil {
		return nil, err
	}
	if !opts.Address.IsValid() {
		opts.Address = netip.MustParseAddr("127.0.0.1")
	}
	if !opts.ServiceCIDR.IsValid() {
		opts.ServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")
	}
	if opts.NodeCIDRMask == 0 {
		opts.NodeCIDRMask = 24
	}
	if opts.Timeout == 0 {
		opts.Timeout = 90 * time.Second
	}
	ports := []struct {
		p   *int
		def int
	}{{&opts.APIPort, 6443}, {&opts.EtcdPort, 2379}, {&opts.EtcdPeerPort, 2380}}
	for _, pt := range ports {
		switch {
		case *pt.p != 0:
		case opts.Netns != "":
			// A netns of its own: the usual ports are free.
			*pt.p = pt.def
		default:
			if *pt.p, err = freePort(); err != nil {
				return nil, err
			}
		}
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, err
	}
	pki, err := LoadOrCreatePKI(filepath.Join(opts.Dir, "pki"))
	if err != nil {
		return nil, err
	}
	cp := &ControlPlane{Dir: opts.Dir, PKI: pki, ServiceCIDR: opts.ServiceCIDR,
		Server: "https://" + net.JoinHostPort(opts.Address.String(), strconv.Itoa(opts.APIPort))}
	defer func() {
		if err != nil {
			_ = StopDir(opts.Dir)
		}
	}()

	// etcd: plain HTTP on loopback, no fsync (a test or one-machine
	// cluster trades durability across power loss for speed).
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", opts.EtcdPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", opts.EtcdPeerPort)
	if err := cp.start(opts, "etcd",
		"--name=bulwark", "--data-dir="+filepath.Join(opts.Dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=bulwark="+peerURL, "--unsafe-no-fsync",
		"--log-level=warn"); err != nil {
		return nil, err
	}

	first := firstServiceIP(opts.ServiceCIDR)
	hosts := []string{opts.Address.String(), "127.0.0.1", first.String(), "localhost",
		"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	servingCert, servingKey, err := pki.Issue("apiserver", "kube-apiserver", nil, hosts)
	if err != nil {
		return nil, err
	}
	kubeletCert, kubeletKey, err := pki.Issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil)
	if err != nil {
		return nil, err
	}
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + opts.Address.String(),
		"--advertise-address=" + opts.Address.String(),
		"--secure-port=" + strconv.Itoa(opts.APIPort),
		"--tls-cert-file=" + servingCert, "--tls-private-key-file=" + servingKey,
		"--client-ca-file=" + pki.CAFile(),
		"--kubelet-client-certificate=" + kubeletCert, "--kubelet-client-key=" + kubeletKey,
		"--service-account-key-file=" + pki.ServiceAccountPubFile(),
		"--service-account-signing-key-file=" + pki.ServiceAccountKeyFile(),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=" + opts.ServiceCIDR.String(),
		"--authorization-mode=Node,RBAC",
		"--allow-privileged=true",
		"--profiling=false",
	}
	if opts.Address.IsLoopback() {
		// The API server refuses to publish a loopback address as the
		// kubernetes Service's endpoint.
		args = append(args, "--endpoint-reconciler-type=none")
	}
	args = append(args, opts.APIServerArgs...)
	if err := cp.start(opts, "kube-apiserver", args...); err != nil {
		return nil, err
	}
	adminCert, adminKey, err := pki.Issue("admin", "bulwark-admin", []string{"system:masters"}, nil)
	if err != nil {
		return nil, err
	}
	cp.Kubeconfig = filepath.Join(opts.Dir, "admin.kubeconfig")
	if err := cp.WriteKubeconfig(cp.Kubeconfig, "admin", adminCert, adminKey); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	if err := cp.waitReady(wctx, opts); err != nil {
		return nil, err
	}

	if opts.ControllerManager {
		cert, key, err := pki.Issue("controller-manager", "system:kube-controller-manager", nil, nil)
		if err != nil {
			return nil, err
		}
		kc := filepath.Join(opts.Dir, "controller-manager.kubeconfig")
		if err := cp.WriteKubeconfig(kc, "system:kube-controller-manager", cert, key); err != nil {
			return nil, err
		}
		args := []string{
			"--kubeconfig=" + kc, "--authentication-kubeconfig=" + kc, "--authorization-kubeconfig=" + kc,
			"--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false",
			"--use-service-account-credentials=true",
			"--service-account-private-key-file=" + pki.ServiceAccountKeyFile(),
			"--root-ca-file=" + pki.CAFile(),
			"--cluster-signing-cert-file=" + pki.CAFile(), "--cluster-signing-key-file=" + pki.CAKeyFile(),
			"--service-cluster-ip-range=" + opts.ServiceCIDR.String(),
		}
		if opts.ClusterCIDR.IsValid() {
			args = append(args, "--allocate-node-cidrs=true", "--cluster-cidr="+opts.ClusterCIDR.String(),
				"--node-cidr-mask-size="+strconv.Itoa(opts.NodeCIDRMask))
		}
		args = append(args, opts.ControllerManagerArgs...)
		if err := cp.start(opts, "kube-controller-manager", args...); err != nil {
			return nil, err
		}
	}
	if opts.Scheduler {
		cert, key, err := pki.Issue("scheduler", "system:kube-scheduler", nil, nil)
		if err != nil {
			return nil, err
		}
		kc := filepath.Join(opts.Dir, "scheduler.kubeconfig")
		if err := cp.WriteKubeconfig(kc, "system:kube-scheduler", cert, key); err != nil {
			return nil, err
		}
		if err := cp.start(opts, "kube-scheduler", "--kubeconfig="+kc,
			"--authentication-kubeconfig="+kc, "--authorization-kubeconfig="+kc,
			"--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false"); err != nil {
			return nil, err
		}
	}
	return cp, nil
}

// RESTConfig is an admin client configuration.
func (cp *ControlPlane) RESTConfig() (*rest.Config, error) {
	return clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
}

// WriteKubeconfig writes a kubeconfig for the API server authenticating
// with a client certificate (see PKI.Issue).
func (cp *ControlPlane) WriteKubeconfig(path, user, certFile, keyFile string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["bulwark"] = &clientcmdapi.Cluster{Server: cp.Server, CertificateAuthority: cp.PKI.CAFile()}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificate: certFile, ClientKey: keyFile}
	cfg.Contexts["bulwark"] = &clientcmdapi.Context{Cluster: "bulwark", AuthInfo: user}
	cfg.CurrentContext = "bulwark"
	return clientcmd.WriteToFile(*cfg, path)
}

// Stop ends every process of the control plane.
func (cp *ControlPlane) Stop() error { return StopDir(cp.Dir) }

// start runs one binary with its log and pid file in the directory.
func (cp *ControlPlane) start(opts Options, name string, args ...string) error {
	logf, err := os.OpenFile(filepath.Join(opts.Dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	bin := filepath.Join(opts.BinDir, name)
	var cmd *exec.Cmd
	if opts.Netns != "" {
		cmd = exec.Command("nsenter", append([]string{"--net=" + opts.Netns, "--", bin}, args...)...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = opts.Dir
	// Its own process group: StopDir signals the group (nsenter and the
	// program it runs). Detached, its own session: it outlives the caller.
	// No Pdeathsig: the kernel sends it when the forking OS thread exits,
	// not the process, and Go retires threads (a goroutine that locked
	// its thread, e.g. to enter a network namespace, exits with it), which
	// killed the API server in the middle of tests. Stop ends the children.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: !opts.Detach, Setsid: opts.Detach}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	pid := cmd.Process.Pid
	go func() { _ = cmd.Wait() }() // reap
	return os.WriteFile(filepath.Join(opts.Dir, name+".pid"), []byte(strconv.Itoa(pid)+"\n"), 0o600)
}

// StopDir ends the processes whose pid files are in dir (newest component
// first), waiting up to 10 s each before killing them.
func StopDir(dir string) error {
	var errs []error
	for _, name := range []string{"kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"} {
		pf := filepath.Join(dir, name+".pid")
		b, err := os.ReadFile(pf)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 1 {
			errs = append(errs, fmt.Errorf("%s: bad pid file", pf))
			continue
		}
		if err := stopGroup(pid, 10*time.Second); err != nil {
			errs = append(errs, fmt.Errorf("stop %s (pid %d): %w", name, pid, err))
			continue
		}
		_ = os.Remove(pf)
	}
	return errors.Join(errs...)
}

// stopGroup sends SIGTERM to a process group, then SIGKILL after grace.
func stopGroup(pid int, grace time.Duration) error {
	if err := syscall.Kill(-pid, syscall.SIGTERM); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return err
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if syscall.Kill(-pid, 0) != nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	for i := 0; i < 100 && syscall.Kill(-pid, 0) == nil; i++ {
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// waitReady polls /readyz until it answers ok.
func (cp *ControlPlane) waitReady(ctx context.Context, opts Options) error {
	cfg, err := cp.RESTConfig()
	if err != nil {
		return err
	}
	tlsCfg, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	var last error
	for {
		resp, err := client.Get(cp.Server + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("readyz: %s", resp.Status)
		}
		last = err
		if !cp.alive("etcd") || !cp.alive("kube-apiserver") {
			return fmt.Errorf("control plane exited before it was ready (logs in %s): %v", cp.Dir, lastLogLine(cp.Dir))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("API server %s not ready: %v (logs in %s)", cp.Server, last, cp.Dir)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (cp *ControlPlane) alive(name string) bool {
	b, err := os.ReadFile(filepath.Join(cp.Dir, name+".pid"))
	if err != nil {
		return false
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid <= 1 || syscall.Kill(pid, 0) != nil {
		return false
	}
	// A zombie (exited, not yet reaped) is not alive.
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := strings.LastIndexByte(string(st), ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
		return false
	}
	return true
}

// lastLogLine returns the last line of the API server's or etcd's log, the
// usual place for the reason it stopped.
func lastLogLine(dir string) string {
	for _, name := range []string{"kube-apiserver", "etcd"} {
		b, err := os.ReadFile(filepath.Join(dir, name+".log"))
		if err != nil || len(b) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		return name + ": " + lines[len(lines)-1]
	}
	return "no log"
}

// freePort asks the kernel for a free TCP port on loopback.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// firstServiceIP is the kubernetes Service's ClusterIP: the range's first
// address after the network address.
func firstServiceIP(p netip.Prefix) netip.Addr { return p.Masked().Addr().Next() }

// CertPool returns a pool holding the cluster CA.
func (cp *ControlPlane) CertPool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cp.PKI.CAPEM())
	return pool
}
