package cli

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/agentapi"
)

// newBPFCmd inspects what the datapath has loaded, as 'cilium bpf ...' does.
func newBPFCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bpf",
		Short: "Inspect the datapath's BPF tables",
	}
	policy := &cobra.Command{
		Use:   "policy",
		Short: "Inspect the per-endpoint policy tables",
	}
	policy.AddCommand(newBPFPolicyGetCmd())
	cmd.AddCommand(policy)
	return cmd
}

func newBPFPolicyGetCmd() *cobra.Command {
	var all bool
	var id uint64
	q := agentQuery{validate: func(_ *cobra.Command, args []string) error {
		id = 0
		if all == (len(args) == 1) {
			return fmt.Errorf("give either --all or one endpoint ID")
		}
		if !all {
			var err error
			id, err = strconv.ParseUint(args[0], 10, 32)
			if err != nil || id == 0 {
				return fmt.Errorf("endpoint ID %q: not a positive number", args[0])
			}
		}
		return nil
	}}
	cmd := &cobra.Command{
		Use:   "get --all | ENDPOINT-ID",
		Short: "Show the datapath's effective policy entries of an endpoint",
		Args:  cobra.MaximumNArgs(1),
		RunE: q.withAgentClient(func(ctx context.Context, cmd *cobra.Command, _ []string, c *agentapi.Client) error {
			pols, err := c.BPFPolicy(ctx, uint32(id)) // id 0: every endpoint
			if err != nil {
				return err
			}
			return q.out.print(cmd.OutOrStdout(), nonNil(pols), func(w io.Writer) error {
				for i, p := range pols {
					if i > 0 {
						fmt.Fprintln(w)
					}
					printBPFPolicy(w, p)
				}
				return nil
			})
		}),
	}
	q.register(cmd, "json")
	cmd.Flags().BoolVar(&all, "all", false, "every endpoint")
	return cmd
}

func printBPFPolicy(w io.Writer, p agentapi.EndpointPolicy) {
	fmt.Fprintf(w, "Endpoint %d (%s), identity %d, revision %d, ingress enforcement %s, egress enforcement %s\n",
		p.EndpointID, p.Pod, p.Identity, p.Revision, p.IngressEnforcement, p.EgressEnforcement)
	tw := newTable(w)
	fmt.Fprintln(tw, "POLICY\tDIRECTION\tIDENTITY/SELECTOR\tPORT/PROTO\tVERDICT\tPOLICIES")
	for _, e := range p.Entries {
		pols := strings.Join(e.Policies, ",")
		if pols == "" {
			pols = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", policyColumn(e.Verdict), e.Direction, e.Peer, e.Port, strings.ToUpper(e.Verdict), pols)
	}
	_ = tw.Flush()
}

// policyColumn is Cilium's POLICY column: Deny for deny entries, Allow for
// the rest (a redirect is an allow through the proxy).
func policyColumn(verdict string) string {
	if strings.EqualFold(verdict, "deny") {
		return "Deny"
	}
	return "Allow"
}
