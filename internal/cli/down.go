package cli

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/agent"
	"github.com/bulwark-net/bulwark/internal/agentapi"
)

// newDownCmd stops an instance's agent and removes everything the instance
// created: pods, namespaces, links, BPF pins, state. Idempotent.
func newDownCmd() *cobra.Command {
	var inst instanceFlags
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop the sandbox and remove everything it created",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := inst.paths()
			if err != nil {
				return err
			}
			ctx := cmdContext(cmd)
			c := agentapi.NewClient(p.Socket)
			if pid, _ := agent.RunningPID(p); pid != 0 {
				sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				err := c.Shutdown(sctx, agentapi.ShutdownRequest{Destroy: true})
				cancel()
				if err == nil {
					err = waitExit(p, pid, time.Minute)
				}
				if err != nil && !errors.Is(err, agentapi.ErrNotRunning) {
					// An agent that does not answer is stopped by signal;
					// the teardown below removes what it leaves.
					fmt.Fprintf(cmd.ErrOrStderr(), "agent (pid %d) did not stop on request (%v); terminating it\n", pid, err)
					if err := terminate(p, pid); err != nil {
						return err
					}
				}
			}
			// Whatever the agent left (or everything, if it was not
			// running): remove it without an agent.
			if err := agent.Teardown(ctx, p); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "instance %q removed\n", p.Instance)
			return nil
		},
	}
	inst.register(cmd)
	return cmd
}

// terminate stops the agent with SIGTERM, then SIGKILL.
func terminate(p agent.Paths, pid int) error {
	_ = syscall.Kill(pid, syscall.SIGTERM)
	if waitExit(p, pid, 10*time.Second) == nil {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	return waitExit(p, pid, 10*time.Second)
}

// waitExit waits for the agent to release the instance lock.
func waitExit(p agent.Paths, pid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cur, _ := agent.RunningPID(p); cur == 0 {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("agent (pid %d) did not stop within %s", pid, timeout)
}
