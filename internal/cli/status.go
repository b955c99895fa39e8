package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/agentapi"
)

// newStatusCmd prints the agent's health and a summary of the instance.
func newStatusCmd() *cobra.Command {
	var q agentQuery
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the agent's health, datapath mode, counts and listen addresses",
		Args:  cobra.NoArgs,
		RunE: q.withAgentClient(func(ctx context.Context, cmd *cobra.Command, _ []string, c *agentapi.Client) error {
			st, err := c.Status(ctx)
			if errors.Is(err, agentapi.ErrNotRunning) {
				fmt.Fprintf(cmd.OutOrStdout(), "Instance:   %s\nAgent:      not running\n", q.inst.instance)
				if p, err := q.inst.paths(); err == nil {
					if _, err := os.Stat(p.Objects); err == nil {
						fmt.Fprintf(cmd.OutOrStdout(), "Hint:       its state is kept; 'bulwark up --instance %s' restarts the agent, 'bulwark down --instance %s' removes it\n", q.inst.instance, q.inst.instance)
					}
				}
				return &ExitError{Code: 1}
			}
			if err != nil {
				return err
			}
			return q.out.print(cmd.OutOrStdout(), st, func(w io.Writer) error { return printStatus(w, st) })
		}),
	}
	q.register(cmd, "json")
	return cmd
}

// printStatus is the text form of status.
func printStatus(out io.Writer, st agentapi.Status) error {
	health := "Ok"
	if !st.Ready {
		health = "Degraded (not every pod is ready and enforcing the current policy)"
	}
	orNone := func(s string) string {
		if s == "" {
			return "disabled"
		}
		return s
	}
	w := newTable(out)
	fmt.Fprintf(w, "Instance:\t%s\n", st.Instance)
	fmt.Fprintf(w, "Agent:\t%s (pid %d, up %s)\n", health, st.PID, age(st.StartedAt))
	fmt.Fprintf(w, "Datapath:\t%s, local delivery %s\n", st.DatapathMode, map[bool]string{true: "on", false: "off"}[st.LocalDelivery])
	fmt.Fprintf(w, "Policy revision:\t%d\n", st.Revision)
	fmt.Fprintf(w, "Pods:\t%d/%d ready\n", st.PodsReady, st.Pods)
	fmt.Fprintf(w, "Services:\t%d\n", st.Services)
	fmt.Fprintf(w, "Policies:\t%d\n", st.Policies)
	fmt.Fprintf(w, "Endpoints:\t%d\n", st.Endpoints)
	fmt.Fprintf(w, "Identities:\t%d\n", st.Identities)
	fmt.Fprintf(w, "Hubble:\t%s\n", orNone(strings.TrimSpace(st.HubbleAddr+" "+st.HubbleSock)))
	printFlowStatus(w, st.Flows)
	fmt.Fprintf(w, "Metrics:\t%s\n", orNone(st.MetricsAddr))
	fmt.Fprintf(w, "API socket:\t%s\n", st.Socket)
	fmt.Fprintf(w, "State:\t%s\n", st.StateDir)
	for _, e := range st.Errors {
		fmt.Fprintf(w, "Error:\t%s\n", e)
	}
	return w.Flush()
}
