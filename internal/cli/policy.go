package cli

import "github.com/spf13/cobra"

// newPolicyCmd groups the offline policy tools (validate, lint, check, trace).
func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Validate, lint, check and trace network policies offline",
	}
	// Subcommands: one line each, keep sorted.
	cmd.AddCommand(
		newPolicyCheckCmd(),
		newPolicyTraceCmd(),
		newPolicyValidateCmd(),
	)
	return cmd
}
