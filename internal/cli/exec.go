package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/sandbox"
	"github.com/bulwark-net/bulwark/internal/sandbox/workload"
)

// newExecCmd is `bulwark exec`: run a host command inside a sandbox pod.
func newExecCmd() *cobra.Command {
	var instance, namespace string
	var stdin, tty bool
	cmd := &cobra.Command{
		Use:   "exec [-n NAMESPACE] POD|deploy/NAME -- COMMAND [ARGS...]",
		Short: "Run a command inside a sandbox pod (its network, DNS and service translation)",
		Long: `Run a host command inside a sandbox pod: in the pod's network namespace,
with the pod's resolv.conf (cluster DNS), inside the sandbox cgroup so that
Service ClusterIPs translate. stdin/stdout/stderr are attached and the
command's exit status is passed through. Works without a running agent.`,
		Example: `  bulwark exec -n demo deploy/frontend -- wget --timeout=2 -q -O- http://backend:8080
  bulwark exec -n demo deploy/backend -- nc -zv database 5432`,
		Args: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			if dash != 1 || len(args) < 2 {
				return fmt.Errorf("usage: bulwark exec [-n NAMESPACE] POD|deploy/NAME -- COMMAND [ARGS...]")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			code, err := sandbox.Exec(cmd.Context(), sandbox.ExecOptions{
				Instance: instance, Namespace: namespace, Target: args[0], Command: args[1:],
				Stdin: os.Stdin, Stdout: cmd.OutOrStdout(), Stderr: cmd.ErrOrStderr(),
			})
			if err != nil {
				return err
			}
			if code != 0 {
				return &ExitError{Code: code}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&instance, "instance", sandbox.DefaultInstance, "sandbox instance")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "pod namespace")
	// kubectl's -i/-t are accepted so its commands paste unchanged: stdin
	// and the controlling terminal are always passed through as they are.
	cmd.Flags().BoolVarP(&stdin, "stdin", "i", false, "accepted for kubectl compatibility (stdin is always attached)")
	cmd.Flags().BoolVarP(&tty, "tty", "t", false, "accepted for kubectl compatibility (the terminal is passed through)")
	return cmd
}

// newWorkloadCmd is the hidden process that stands in for a pod's
// containers; the sandbox starts it, users never do.
func newWorkloadCmd() *cobra.Command {
	return &cobra.Command{
		Use:                workload.Command,
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := workload.Main(args); code != 0 {
				return &ExitError{Code: code}
			}
			return nil
		},
	}
}
