package cli

import (
	"fmt"
	"sort"

	"github.com/spf13/cobra"
)

// newIdentityCmd lists the security identities the agent knows.
func newIdentityCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "identity",
		Short: "Inspect security identities",
	}
	var inst instanceFlags
	var out outputFlag
	list := &cobra.Command{
		Use:   "list",
		Short: "List identities and their labels",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.check(); err != nil {
				return err
			}
			c, err := inst.client()
			if err != nil {
				return err
			}
			ids, err := c.Identities(cmdContext(cmd))
			if err != nil {
				return err
			}
			sort.Slice(ids, func(i, j int) bool { return ids[i].ID < ids[j].ID })
			if out.format == "json" {
				return printJSON(cmd.OutOrStdout(), nonNil(ids))
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "ID\tLABELS")
			for _, id := range ids {
				labels := id.Labels
				if len(labels) == 0 {
					labels = []string{""}
				}
				fmt.Fprintf(tw, "%d\t%s\n", id.ID, labels[0])
				for _, l := range labels[1:] {
					fmt.Fprintf(tw, "\t%s\n", l)
				}
			}
			return tw.Flush()
		},
	}
	inst.register(list)
	out.register(list, "json")
	cmd.AddCommand(list)
	return cmd
}
