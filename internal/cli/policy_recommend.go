package cli

import (
	"fmt"
	"io"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/recommend"
)

type policyRecommendOptions struct {
	hubble         hubbleServerFlags
	namespace      string
	since          string
	output         string
	kind           string
	includeDropped bool
}

// newPolicyRecommendCmd is `bulwark policy recommend -n NS [--since 1h]
// [-o yaml] [--kind networkpolicy|cnp]`.
func newPolicyRecommendCmd() *cobra.Command {
	var o policyRecommendOptions
	cmd := &cobra.Command{
		Use:   "recommend -n NAMESPACE [--since 1h] [--kind networkpolicy|cnp] [-o yaml]",
		Short: "Write least-privilege policies for a namespace from the flows the agent observed",
		Long: `Recommend reads the flows the agent holds (the Hubble API; its ring keeps
the most recent ones, see 'bulwark status') and writes, for every workload of
the namespace that was seen, a policy that selects it by its labels, denies by
default in both directions and allows exactly the connections seen: the peer
by its workload labels (and namespace), or outside the cluster by address
(by DNS name in a CNP, where the flow carries it), the protocol and the
destination port. Forwarded, L7-proxied and audited connections count;
--include-dropped adds policy drops (what the application tries and is denied).

Check the output before applying it:
  bulwark policy check -f app.yaml -f recommended.yaml --flows expected.jsonl`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runPolicyRecommend(cmd, o)
		},
	}
	o.hubble.register(cmd)
	f := cmd.Flags()
	f.StringVarP(&o.namespace, "namespace", "n", "", "namespace whose workloads get policies (required)")
	f.StringVar(&o.since, "since", "", "only flows since this long ago (1h) or this RFC 3339 time (default: every flow the agent holds)")
	f.StringVarP(&o.output, "output", "o", "yaml", "output format: yaml")
	f.StringVar(&o.kind, "kind", "networkpolicy", "policy kind: networkpolicy or cnp")
	f.BoolVar(&o.includeDropped, "include-dropped", false, "also allow connections that policy dropped")
	return cmd
}

func runPolicyRecommend(cmd *cobra.Command, o policyRecommendOptions) error {
	if o.namespace == "" {
		return fmt.Errorf("policy recommend: -n NAMESPACE is required")
	}
	if o.output != "yaml" {
		return fmt.Errorf("policy recommend: -o %q: only yaml is supported", o.output)
	}
	kind, err := recommend.ParseKind(o.kind)
	if err != nil {
		return fmt.Errorf("policy recommend: --%w", err)
	}
	req := &observerpb.GetFlowsRequest{
		// Either end in the namespace, as hubble's --namespace.
		Whitelist: []*flowpb.FlowFilter{
			{SourcePod: []string{o.namespace + "/"}},
			{DestinationPod: []string{o.namespace + "/"}},
		},
	}
	if o.since != "" {
		if req.Since, err = parseFlowTime("--since", o.since, time.Now()); err != nil {
			return fmt.Errorf("policy recommend: %w", err)
		}
	}
	client, closeConn, target, err := o.hubble.dial(cmd)
	if err != nil {
		return fmt.Errorf("policy recommend: %w", err)
	}
	defer closeConn()
	ctx, cancel := signalContext(cmd)
	defer cancel()
	var flows []*flowpb.Flow
	err = streamFlows(ctx, client, req, func(r *observerpb.GetFlowsResponse) error {
		if nodeStatusNotice(cmd.ErrOrStderr(), r) {
			return nil
		}
		if f := r.GetFlow(); f != nil {
			flows = append(flows, f)
		}
		return nil
	})
	if err != nil {
		return hubbleError("policy recommend: read flows", target, err)
	}
	res, err := recommend.Recommend(flows, recommend.Options{Namespace: o.namespace, Kind: kind, IncludeDropped: o.includeDropped})
	if err != nil {
		return fmt.Errorf("policy recommend: %w", err)
	}
	return writeRecommendation(cmd.OutOrStdout(), res)
}

func writeRecommendation(w io.Writer, res *recommend.Result) error {
	y, err := res.YAML()
	if err != nil {
		return fmt.Errorf("policy recommend: %w", err)
	}
	_, err = w.Write(y)
	return err
}
