package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/check"
	"github.com/spf13/cobra"
)

type policyTraceOptions struct {
	files stateFiles
	src   string
	dst   string
	srcID uint32
	dstID uint32
	dport int
	proto string
}

// newPolicyTraceCmd is `bulwark policy trace --src-k8s-pod NS:POD --dst-k8s-pod NS:POD --dport N -f STATE...`.
func newPolicyTraceCmd() *cobra.Command {
	var o policyTraceOptions
	cmd := &cobra.Command{
		Use:   "trace (--src-k8s-pod NS:POD | --src-identity ID) (--dst-k8s-pod NS:POD | --dst-identity ID) --dport N [--proto TCP] -f STATE...",
		Short: "Explain the verdict of one connection between two pods",
		Long: `Trace explains how the policies of the state decide a connection: the
identities of both pods and their labels, the rules selecting each side, the
source's egress verdict, the destination's ingress verdict with the matching
rules or the default deny, and the final verdict.

Either side may be given as an identity (as "cilium policy trace
--src-identity" does): the first pod with that identity is traced, and an
identity no pod has (world, a CIDR identity) is a peer outside the cluster.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runPolicyTrace(cmd.OutOrStdout(), o)
		},
	}
	f := cmd.Flags()
	o.files.register(cmd)
	f.StringVar(&o.src, "src-k8s-pod", "", "source pod as NAMESPACE:POD")
	f.StringVar(&o.dst, "dst-k8s-pod", "", "destination pod as NAMESPACE:POD")
	f.Uint32Var(&o.srcID, "src-identity", 0, "source identity (instead of --src-k8s-pod)")
	f.Uint32Var(&o.dstID, "dst-identity", 0, "destination identity (instead of --dst-k8s-pod)")
	f.IntVar(&o.dport, "dport", 0, "destination port")
	f.StringVar(&o.proto, "proto", "TCP", "protocol: TCP, UDP or SCTP")
	return cmd
}

func podRef(flag, v string) (string, error) {
	ns, pod, ok := strings.Cut(v, ":")
	if !ok || ns == "" || pod == "" {
		return "", fmt.Errorf("policy trace: --%s %q: want NAMESPACE:POD", flag, v)
	}
	return ns + "/" + pod, nil
}

func runPolicyTrace(w io.Writer, o policyTraceOptions) error {
	if err := o.files.require("policy trace"); err != nil {
		return err
	}
	if (o.src == "") == (o.srcID == 0) {
		return fmt.Errorf("policy trace: give exactly one of --src-k8s-pod and --src-identity")
	}
	if (o.dst == "") == (o.dstID == 0) {
		return fmt.Errorf("policy trace: give exactly one of --dst-k8s-pod and --dst-identity")
	}
	var src, dst string
	var err error
	if o.src != "" {
		if src, err = podRef("src-k8s-pod", o.src); err != nil {
			return err
		}
	}
	if o.dst != "" {
		if dst, err = podRef("dst-k8s-pod", o.dst); err != nil {
			return err
		}
	}
	if o.dport < 1 || o.dport > 65535 {
		return fmt.Errorf("policy trace: --dport %d: must be 1-65535", o.dport)
	}
	st, err := o.files.load("policy trace")
	if err != nil {
		return err
	}
	peer := func(ref string, id uint32, flag string) (check.Peer, error) {
		if ref != "" {
			return st.Peer(ref)
		}
		p, err := st.IdentityPeer(identity.NumericIdentity(id))
		if err != nil {
			return p, fmt.Errorf("--%s: %w", flag, err)
		}
		return p, nil
	}
	sp, err := peer(src, o.srcID, "src-identity")
	if err != nil {
		return fmt.Errorf("policy trace: %w", err)
	}
	dp, err := peer(dst, o.dstID, "dst-identity")
	if err != nil {
		return fmt.Errorf("policy trace: %w", err)
	}
	res, err := st.CheckPeers(sp, dp, o.dport, o.proto)
	if err != nil {
		return fmt.Errorf("policy trace: %w", err)
	}
	return st.WriteTrace(w, res)
}
