package cli

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/bulwark-net/bulwark/internal/agent"
	"github.com/bulwark-net/bulwark/internal/cni"
)

// kubeInstance is the instance name of the Kubernetes-mode agent: its
// socket is then cni.DefaultAgentSocket.
const kubeInstance = "k8s"

// kubeFlags are the agent's Kubernetes-mode flags.
type kubeFlags struct {
	enabled       bool
	kubeconfig    string
	nodeName      string
	nodeNetns     string
	cniConf       string
	cniMode       string
	ipamDir       string
	nativeRouting bool
	cgroupRoot    string
	idGCInterval  time.Duration
	idGCGrace     time.Duration
	localIDs      bool
	installCRDs   bool
}

func (f *kubeFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.BoolVar(&f.enabled, "kubernetes", false, "run as a Kubernetes node agent: state from the API server, pods attached by bulwark-cni")
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (Kubernetes mode; default: the in-cluster configuration)")
	fl.StringVar(&f.nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (Kubernetes mode; default $NODE_NAME)")
	fl.StringVar(&f.cniConf, "cni-conf", "", "write the CNI configuration there once the node has a pod CIDR: a .conflist file or a directory (e.g. /etc/cni/net.d)")
	fl.StringVar(&f.cniMode, "cni-mode", cni.ModeStandalone, "CNI mode: standalone (own veth, host-local IPAM) or chained (after ptp)")
	fl.StringVar(&f.ipamDir, "cni-ipam-dir", cni.DefaultIPAMDataDir, "host-local's reservations directory in the written CNI configuration")
	fl.StringVar(&f.cgroupRoot, "cgroup-root", "", "cgroup v2 directory of the node's pods (e.g. /sys/fs/cgroup): translate ClusterIPs at their sockets so that egress policy sees the backend pod (empty: none; kube-proxy's NAT comes after the policy, which then sees the Service address)")
	fl.BoolVar(&f.nativeRouting, "native-routing", false, "route every other node's pod CIDRs via that node's InternalIP")
	fl.BoolVar(&f.installCRDs, "install-crds", true, "install or update the cilium.io CRDs on start (as Cilium's agent does; an existing Cilium CRD of the same or a newer schema is kept)")
	fl.DurationVar(&f.idGCInterval, "identity-gc-interval", 15*time.Minute, "how often to delete the CiliumIdentity objects no pod of the cluster uses (as Cilium's operator; every agent does it, safely; 0 or less: never)")
	fl.DurationVar(&f.idGCGrace, "identity-gc-grace", 15*time.Minute, "how long a CiliumIdentity stays unused before it is deleted")
	fl.BoolVar(&f.localIDs, "local-identities", false, "number identities on this node alone instead of through CiliumIdentity objects (single-node clusters only)")
	fl.StringVar(&f.nodeNetns, "node-netns", "", "network namespace (path) of the node's pod interfaces and routes (default: the agent's own)")
	_ = fl.MarkHidden("node-netns")
}

func (f *kubeFlags) restConfig() (*rest.Config, error) {
	if f.kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig not given and no in-cluster configuration: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", f.kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("--kubeconfig %s: %w", f.kubeconfig, err)
	}
	return cfg, nil
}

func runKubeAgent(ctx context.Context, opts agent.Options, f kubeFlags) error {
	cfg, err := f.restConfig()
	if err != nil {
		return err
	}
	cfg.UserAgent = "bulwark-agent/" + f.nodeName
	return agent.RunKubernetes(ctx, agent.KubeOptions{
		Options: opts, REST: cfg, NodeName: f.nodeName, NodeNetns: f.nodeNetns,
		CNIConf: f.cniConf, CNIMode: f.cniMode, IPAMDataDir: f.ipamDir, NativeRouting: f.nativeRouting, CgroupRoot: f.cgroupRoot,
		IdentityGCInterval: gcInterval(f.idGCInterval), IdentityGCGrace: f.idGCGrace,
		LocalIdentities: f.localIDs, SkipCRDs: !f.installCRDs,
	})
}

// gcInterval maps the flag (0 or less: never) to KubeOptions (negative:
// never).
func gcInterval(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}
