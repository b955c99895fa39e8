// Package cli builds Bulwark's cobra command tree. Each subcommand lives in
// its own file as a constructor (newXxxCmd) taking no globals; this file only
// assembles them.
package cli

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// ExitError carries a process exit status out of a command without printing
// an extra error line (the command has already reported).
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// NewRootCmd returns the root command with every subcommand attached.
func NewRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "bulwark",
		Short:         "eBPF network-policy enforcement for Kubernetes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// Subcommands: one line each, keep sorted.
	root.AddCommand(
		newAgentCmd(),
		newApplyCmd(),
		newBPFCmd(),
		newClusterCmd(),
		newDeleteCmd(),
		newDownCmd(),
		newEndpointCmd(),
		newExecCmd(),
		newGetCmd(),
		newHubbleCmd(),
		newIdentityCmd(),
		newInstallCNICmd(),
		newMonitorCmd(),
		newObserveCmd(),
		newPolicyCmd(),
		newRelayCmd(),
		newStatusCmd(),
		newUICmd(),
		newUpCmd(),
		newVersionCmd(),
		newWorldCmd(),
		newWorkloadCmd(), // hidden: sandbox pod process
		newGetentCmd(),   // hidden: getent in the cluster's images
		newNcCmd(),       // hidden: nc -z in the cluster's images
	)
	return root
}

// Execute runs the command tree and returns the process exit status.
func Execute() int {
	err := NewRootCmd().Execute()
	if err == nil {
		return 0
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	fmt.Fprintln(os.Stderr, "Error:", err)
	return 1
}

// Version is set at build time with -ldflags "-X ...cli.Version=...".
var Version = "dev"

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "bulwark", Version)
		},
	}
}
