package cli

import (
	"context"
	"fmt"
	"io"
	"sort"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/agentapi"
)

// newIdentityCmd lists the security identities the agent knows.
func newIdentityCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "identity",
		Short: "Inspect security identities",
	}
	var q agentQuery
	list := &cobra.Command{
		Use:   "list",
		Short: "List identities and their labels",
		Args:  cobra.NoArgs,
		RunE: q.withAgentClient(func(ctx context.Context, cmd *cobra.Command, _ []string, c *agentapi.Client) error {
			ids, err := c.Identities(ctx)
			if err != nil {
				return err
			}
			sort.Slice(ids, func(i, j int) bool { return ids[i].ID < ids[j].ID })
			return q.out.print(cmd.OutOrStdout(), nonNil(ids), func(w io.Writer) error {
				tw := newTable(w)
				fmt.Fprintln(tw, "ID\tLABELS")
				for _, id := range ids {
					writeListRow(tw, []string{fmt.Sprint(id.ID), ""}, 1, id.Labels)
				}
				return tw.Flush()
			})
		}),
	}
	q.register(list, "json")
	cmd.AddCommand(list)
	return cmd
}
