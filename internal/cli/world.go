package cli

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/agentapi"
)

// newWorldCmd lists and changes the running sandbox's simulated world.
func newWorldCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "world",
		Short: "List or change the names the simulated outside world serves (HTTP on 80 and 443, answered by the sandbox DNS)",
	}
	for _, c := range []struct {
		use, short string
		req        func([]string) agentapi.WorldRequest
		args       cobra.PositionalArgs
	}{
		{"list", "List the world's names and addresses", func([]string) agentapi.WorldRequest { return agentapi.WorldRequest{} }, cobra.NoArgs},
		{"add NAME...", "Add names (or wildcard zones like '*.test.example') to the running instance's world", func(a []string) agentapi.WorldRequest { return agentapi.WorldRequest{Add: a} }, cobra.MinimumNArgs(1)},
		{"remove NAME...", "Remove names from the running instance's world", func(a []string) agentapi.WorldRequest { return agentapi.WorldRequest{Remove: a} }, cobra.MinimumNArgs(1)},
	} {
		var q agentQuery
		sub := &cobra.Command{
			Use: c.use, Short: c.short, Args: c.args,
			RunE: q.withAgentClient(func(ctx context.Context, cmd *cobra.Command, args []string, cl *agentapi.Client) error {
				resp, err := cl.World(ctx, c.req(args))
				if err != nil {
					return err
				}
				return q.out.print(cmd.OutOrStdout(), resp, func(w io.Writer) error {
					t := newTable(w)
					fmt.Fprintln(t, "NAME\tADDRESS")
					for _, h := range resp.Hosts {
						fmt.Fprintf(t, "%s\t%s\n", h.Name, h.IP)
					}
					return t.Flush()
				})
			}),
		}
		q.register(sub, "json")
		cmd.AddCommand(sub)
	}
	return cmd
}
