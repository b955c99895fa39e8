package cli

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/agentapi"
)

// newStatusCmd prints the agent's health and a summary of the instance.
func newStatusCmd() *cobra.Command {
	var inst instanceFlags
	var out outputFlag
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the agent's health, datapath mode, counts and listen addresses",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.check(); err != nil {
				return err
			}
			c, err := inst.client()
			if err != nil {
				return err
			}
			st, err := c.Status(cmdContext(cmd))
			if errors.Is(err, agentapi.ErrNotRunning) {
				fmt.Fprintf(cmd.OutOrStdout(), "Instance:   %s\nAgent:      not running\n", inst.instance)
				if p, err := inst.paths(); err == nil {
					if _, err := os.Stat(p.Objects); err == nil {
						fmt.Fprintf(cmd.OutOrStdout(), "Hint:       its state is kept; 'bulwark up --instance %s' restarts the agent, 'bulwark down --instance %s' removes it\n", inst.instance, inst.instance)
					}
				}
				return &ExitError{Code: 1}
			}
			if err != nil {
				return err
			}
			if out.format == "json" {
				return printJSON(cmd.OutOrStdout(), st)
			}
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
			w := newTable(cmd.OutOrStdout())
			fmt.Fprintf(w, "Instance:\t%s\n", st.Instance)
			fmt.Fprintf(w, "Agent:\t%s (pid %d, up %s)\n", health, st.PID, age(st.StartedAt))
			fmt.Fprintf(w, "Datapath:\t%s\n", st.DatapathMode)
			fmt.Fprintf(w, "Policy revision:\t%d\n", st.Revision)
			fmt.Fprintf(w, "Pods:\t%d/%d ready\n", st.PodsReady, st.Pods)
			fmt.Fprintf(w, "Services:\t%d\n", st.Services)
			fmt.Fprintf(w, "Policies:\t%d\n", st.Policies)
			fmt.Fprintf(w, "Endpoints:\t%d\n", st.Endpoints)
			fmt.Fprintf(w, "Identities:\t%d\n", st.Identities)
			fmt.Fprintf(w, "Hubble:\t%s\n", orNone(strings.TrimSpace(st.HubbleAddr+" "+st.HubbleSock)))
			fmt.Fprintf(w, "Metrics:\t%s\n", orNone(st.MetricsAddr))
			fmt.Fprintf(w, "API socket:\t%s\n", st.Socket)
			fmt.Fprintf(w, "State:\t%s\n", st.StateDir)
			for _, e := range st.Errors {
				fmt.Fprintf(w, "Error:\t%s\n", e)
			}
			return w.Flush()
		},
	}
	inst.register(cmd)
	out.register(cmd, "json")
	return cmd
}
