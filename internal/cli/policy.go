package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/offline/check"
)

// newPolicyCmd groups the offline policy tools (validate, lint, check, trace).
func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Validate, lint, check and trace network policies offline; recommend them from observed flows",
	}
	// Subcommands: one line each, keep sorted.
	cmd.AddCommand(
		newPolicyCheckCmd(),
		newPolicyRecommendCmd(),
		newPolicyTraceCmd(),
		newPolicyValidateCmd(),
	)
	return cmd
}

// stateFiles is -f of the offline check and trace: the manifests (files or
// directories) that make up a cluster state.
type stateFiles []string

func (s *stateFiles) register(cmd *cobra.Command) {
	cmd.Flags().StringArrayVarP((*[]string)(s), "file", "f", nil, "state manifests: files or directories (repeatable)")
}

// require fails when no -f was given; command names the command in the
// error ("policy check").
func (s stateFiles) require(command string) error {
	if len(s) == 0 {
		return fmt.Errorf("%s: -f STATE is required", command)
	}
	return nil
}

// load reads the state.
func (s stateFiles) load(command string) (*check.State, error) {
	st, err := check.Load(s...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", command, err)
	}
	return st, nil
}
