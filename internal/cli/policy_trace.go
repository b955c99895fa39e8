package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/offline/check"
	"github.com/spf13/cobra"
)

type policyTraceOptions struct {
	files stateFiles
	inst  instanceFlags // without -f: the running instance's live pods
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
		Use:   "trace (--src-k8s-pod NS:POD | --src-identity ID) (--dst-k8s-pod NS:POD | --dst-identity ID) --dport N [--proto TCP] [-f STATE... | --instance NAME]",
		Short: "Explain the verdict of one connection between two pods",
		Long: `Trace explains how the policies of the state decide a connection: the
identities of both pods and their labels, the rules selecting each side, the
source's egress verdict, the destination's ingress verdict with the matching
rules or the default deny, and the final verdict.

Either side may be given as an identity (as "cilium policy trace
--src-identity" does): the first pod with that identity is traced, and an
identity no pod has (world, a CIDR identity) is a peer outside the cluster.

Without -f, the running instance (--instance, "default") traces against its
live pods and the policies it enforces, as "cilium policy trace" asks the
agent.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(o.files) == 0 {
				return runPolicyTraceLive(cmdContext(cmd), cmd.OutOrStdout(), o)
			}
			return runPolicyTrace(cmd.OutOrStdout(), o)
		},
	}
	f := cmd.Flags()
	o.files.register(cmd)
	o.inst.register(cmd)
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

// traceQuery checks the flags shared by the offline and live traces.
func (o policyTraceOptions) traceQuery() (check.TraceQuery, error) {
	q := check.TraceQuery{SrcIdentity: identity.NumericIdentity(o.srcID), DstIdentity: identity.NumericIdentity(o.dstID), Port: o.dport, Protocol: o.proto}
	if (o.src == "") == (o.srcID == 0) {
		return q, fmt.Errorf("policy trace: give exactly one of --src-k8s-pod and --src-identity")
	}
	if (o.dst == "") == (o.dstID == 0) {
		return q, fmt.Errorf("policy trace: give exactly one of --dst-k8s-pod and --dst-identity")
	}
	var err error
	if o.src != "" {
		if q.Src, err = podRef("src-k8s-pod", o.src); err != nil {
			return q, err
		}
	}
	if o.dst != "" {
		if q.Dst, err = podRef("dst-k8s-pod", o.dst); err != nil {
			return q, err
		}
	}
	if o.dport < 1 || o.dport > 65535 {
		return q, fmt.Errorf("policy trace: --dport %d: must be 1-65535", o.dport)
	}
	return q, nil
}

// runPolicyTraceLive asks the running instance's agent.
func runPolicyTraceLive(ctx context.Context, w io.Writer, o policyTraceOptions) error {
	q, err := o.traceQuery()
	if err != nil {
		return err
	}
	c, err := o.inst.client()
	if err != nil {
		return fmt.Errorf("policy trace: %w", err)
	}
	res, err := c.Trace(ctx, agentapi.TraceRequest{Src: q.Src, Dst: q.Dst, SrcIdentity: o.srcID, DstIdentity: o.dstID, Port: q.Port, Protocol: q.Protocol})
	if err != nil {
		if errors.Is(err, agentapi.ErrNotRunning) {
			return fmt.Errorf("policy trace: instance %q is not running: start it (bulwark up) or give the state with -f: %w", o.inst.instance, err)
		}
		return fmt.Errorf("policy trace: %w", err)
	}
	_, err = io.WriteString(w, res.Text)
	return err
}

func runPolicyTrace(w io.Writer, o policyTraceOptions) error {
	if err := o.files.require("policy trace"); err != nil {
		return err
	}
	q, err := o.traceQuery()
	if err != nil {
		return err
	}
	st, err := o.files.load("policy trace")
	if err != nil {
		return err
	}
	if err := st.Trace(w, q); err != nil {
		return fmt.Errorf("policy trace: %w", err)
	}
	return nil
}
