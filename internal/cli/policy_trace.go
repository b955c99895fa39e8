package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/bulwark-net/bulwark/internal/policy/check"
	"github.com/spf13/cobra"
)

type policyTraceOptions struct {
	files []string
	src   string
	dst   string
	dport int
	proto string
}

// newPolicyTraceCmd is `bulwark policy trace --src-k8s-pod NS:POD --dst-k8s-pod NS:POD --dport N -f STATE...`.
func newPolicyTraceCmd() *cobra.Command {
	var o policyTraceOptions
	cmd := &cobra.Command{
		Use:   "trace --src-k8s-pod NS:POD --dst-k8s-pod NS:POD --dport N [--proto TCP] -f STATE...",
		Short: "Explain the verdict of one connection between two pods",
		Long: `Trace explains how the policies of the state decide a connection: the
identities of both pods and their labels, the rules selecting each side, the
source's egress verdict, the destination's ingress verdict with the matching
rules or the default deny, and the final verdict.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runPolicyTrace(cmd.OutOrStdout(), o)
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&o.files, "file", "f", nil, "state manifests: files or directories (repeatable)")
	f.StringVar(&o.src, "src-k8s-pod", "", "source pod as NAMESPACE:POD")
	f.StringVar(&o.dst, "dst-k8s-pod", "", "destination pod as NAMESPACE:POD")
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
	if len(o.files) == 0 {
		return fmt.Errorf("policy trace: -f STATE is required")
	}
	src, err := podRef("src-k8s-pod", o.src)
	if err != nil {
		return err
	}
	dst, err := podRef("dst-k8s-pod", o.dst)
	if err != nil {
		return err
	}
	if o.dport < 1 || o.dport > 65535 {
		return fmt.Errorf("policy trace: --dport %d: must be 1-65535", o.dport)
	}
	st, err := check.Load(o.files...)
	if err != nil {
		return fmt.Errorf("policy trace: %w", err)
	}
	res, err := st.Check(check.Flow{Src: src, Dst: dst, Port: o.dport, Protocol: o.proto})
	if err != nil {
		return fmt.Errorf("policy trace: %w", err)
	}
	return st.WriteTrace(w, res)
}
