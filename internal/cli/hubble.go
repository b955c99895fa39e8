package cli

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/agent"
)

// newHubbleCmd groups commands about an instance's Hubble API.
func newHubbleCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "hubble",
		Short: "The instance's Hubble API (for the stock hubble CLI)",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newHubbleCertsCmd())
	return cmd
}

// newHubbleCertsCmd prints the stock hubble CLI's flags for an instance
// whose Hubble TCP listener requires TLS (up --hubble-tls).
func newHubbleCertsCmd() *cobra.Command {
	var inst instanceFlags
	cmd := &cobra.Command{
		Use:     "certs",
		Short:   "Print the hubble CLI's --server and --tls flags for the instance's TLS listener",
		Example: `  hubble observe $(bulwark hubble certs) --namespace demo`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := inst.paths()
			if err != nil {
				return err
			}
			la, err := agent.ReadListenAddrs(p)
			switch {
			case errors.Is(err, os.ErrPermission):
				return fmt.Errorf("instance %q: its state is root only (the client key with it): run as root", p.Instance)
			case err != nil:
				return err
			case la.HubbleTCP == "":
				return fmt.Errorf("instance %q has no Hubble TCP listener (it uses its root-only unix socket %s); give 'bulwark up --hubble-listen 127.0.0.1:PORT --hubble-tls'", p.Instance, la.HubbleSocket)
			case !la.HubbleTLS:
				return fmt.Errorf("instance %q serves Hubble on %s without TLS (every local user can read it): restart it with 'bulwark up --instance %s --hubble-tls'", p.Instance, la.HubbleTCP, p.Instance)
			}
			files := p.HubbleTLS()
			if _, err := os.Stat(files.ClientKey); err != nil {
				return fmt.Errorf("instance %q: no client certificate yet (%v): is its agent running?", p.Instance, err)
			}
			// The bound address (a configured port 0 is chosen at start).
			server := la.HubbleTCP
			if c, err := inst.client(); err == nil {
				if st, err := c.Status(cmdContext(cmd)); err == nil && st.HubbleAddr != "" {
					server = st.HubbleAddr
				}
			}
			fmt.Fprintln(cmd.OutOrStdout(), strings.Join(append([]string{"--server", server}, files.Flags()...), " "))
			return nil
		},
	}
	inst.register(cmd)
	return cmd
}
