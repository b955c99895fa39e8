package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/agentapi"
)

// newEndpointCmd lists and shows the agent's local endpoints, as
// 'cilium endpoint list/get' do.
func newEndpointCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "endpoint",
		Short: "List and inspect the local endpoints under enforcement",
	}
	cmd.AddCommand(newEndpointListCmd(), newEndpointGetCmd())
	return cmd
}

func newEndpointListCmd() *cobra.Command {
	var q agentQuery
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the local endpoints",
		Args:  cobra.NoArgs,
		RunE: q.withAgentClient(func(ctx context.Context, cmd *cobra.Command, _ []string, c *agentapi.Client) error {
			eps, err := c.Endpoints(ctx)
			if err != nil {
				return err
			}
			sort.Slice(eps, func(i, j int) bool { return eps[i].ID < eps[j].ID })
			return q.out.print(cmd.OutOrStdout(), nonNil(eps), func(w io.Writer) error {
				tw := newTable(w)
				fmt.Fprintln(tw, "ENDPOINT\tPOLICY (ingress)\tPOLICY (egress)\tIDENTITY\tLABELS (source:key[=value])\tIPv4\tREVISION\tSTATUS")
				for _, e := range eps {
					writeListRow(tw, []string{fmt.Sprint(e.ID), e.IngressEnforcement, e.EgressEnforcement,
						fmt.Sprint(e.Identity), "", e.IPv4, fmt.Sprint(e.Revision), e.Status}, 4, e.Labels)
				}
				return tw.Flush()
			})
		}),
	}
	q.register(cmd, "json")
	return cmd
}

func newEndpointGetCmd() *cobra.Command {
	var q agentQuery
	cmd := &cobra.Command{
		Use:   "get ID|NAMESPACE/POD",
		Short: "Show one endpoint",
		Args:  cobra.ExactArgs(1),
		RunE: q.withAgentClient(func(ctx context.Context, cmd *cobra.Command, args []string, c *agentapi.Client) error {
			eps, err := c.Endpoints(ctx)
			if err != nil {
				return err
			}
			ep, err := findEndpoint(eps, args[0])
			if err != nil {
				return err
			}
			return q.out.print(cmd.OutOrStdout(), ep, func(w io.Writer) error {
				tw := newTable(w)
				fmt.Fprintf(tw, "ID:\t%d\n", ep.ID)
				fmt.Fprintf(tw, "Pod:\t%s\n", ep.Pod)
				fmt.Fprintf(tw, "Identity:\t%d\n", ep.Identity)
				fmt.Fprintf(tw, "Labels:\t%s\n", strings.Join(ep.Labels, ", "))
				fmt.Fprintf(tw, "IPv4:\t%s\n", ep.IPv4)
				if ep.IPv6 != "" {
					fmt.Fprintf(tw, "IPv6:\t%s\n", ep.IPv6)
				}
				fmt.Fprintf(tw, "Interface:\t%s\n", ep.Interface)
				fmt.Fprintf(tw, "Ingress enforcement:\t%s\n", ep.IngressEnforcement)
				fmt.Fprintf(tw, "Egress enforcement:\t%s\n", ep.EgressEnforcement)
				fmt.Fprintf(tw, "Policy revision:\t%d\n", ep.Revision)
				fmt.Fprintf(tw, "Status:\t%s\n", ep.Status)
				return tw.Flush()
			})
		}),
	}
	q.register(cmd, "json")
	return cmd
}

// findEndpoint finds an endpoint by numeric ID or by its pod's
// namespace/name.
func findEndpoint(eps []agentapi.Endpoint, arg string) (agentapi.Endpoint, error) {
	if id, err := strconv.ParseUint(arg, 10, 32); err == nil {
		for _, e := range eps {
			if uint64(e.ID) == id {
				return e, nil
			}
		}
		return agentapi.Endpoint{}, fmt.Errorf("endpoint %d not found", id)
	}
	for _, e := range eps {
		if e.Pod == arg {
			return e, nil
		}
	}
	return agentapi.Endpoint{}, fmt.Errorf("no endpoint for pod %q (want an endpoint ID or NAMESPACE/POD)", arg)
}
