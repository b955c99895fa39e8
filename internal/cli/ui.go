package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/agentapi"
)

type uiOptions struct {
	noBrowser bool
}

// newUICmd is `bulwark ui [--instance X] [--no-browser]`: the agent serves
// its service map on loopback; this prints the address and opens it.
func newUICmd() *cobra.Command {
	var q agentQuery
	var o uiOptions
	cmd := &cobra.Command{
		Use:   "ui [--no-browser]",
		Short: "Open the service map: who talks to whom, live, with verdicts and the policy behind each drop",
		Long: `The agent serves a service map on 127.0.0.1 (a free port, kept while the
agent runs): namespaces and workloads as nodes, connections as edges coloured
by verdict, a live flow table with Hubble's filters, and for a dropped edge or
flow the policy that decided it and the 'policy trace' explanation.

ui prints the page's address and opens it with xdg-open when a desktop
session is there; --no-browser only prints it (-o json prints {"url": ...}
and opens nothing).`,
		Args: cobra.NoArgs,
		RunE: q.withAgentClient(func(ctx context.Context, cmd *cobra.Command, _ []string, c *agentapi.Client) error {
			r, err := c.StartUI(ctx)
			if err != nil {
				return fmt.Errorf("ui: %w", err)
			}
			if q.out.format == "json" {
				// Scripts read the address; nothing is opened.
				return printJSON(cmd.OutOrStdout(), r)
			}
			fmt.Fprintln(cmd.OutOrStdout(), r.URL)
			if !o.noBrowser {
				openBrowser(cmd.ErrOrStderr(), r.URL)
			}
			return nil
		}),
	}
	q.register(cmd, "json")
	cmd.Flags().BoolVar(&o.noBrowser, "no-browser", false, "only print the address")
	return cmd
}

// openBrowser opens url with xdg-open where a desktop session exists; it
// only explains when it cannot (the address is printed anyway).
func openBrowser(stderr io.Writer, url string) {
	opener, err := exec.LookPath("xdg-open")
	if err != nil {
		fmt.Fprintln(stderr, "(no xdg-open here: open the address in a browser)")
		return
	}
	if os.Getenv("DISPLAY") == "" && os.Getenv("WAYLAND_DISPLAY") == "" {
		fmt.Fprintln(stderr, "(no desktop session: open the address in a browser)")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, opener, url).CombinedOutput(); err != nil {
		fmt.Fprintf(stderr, "(xdg-open failed: %v %s)\n", err, out)
	}
}
