package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/agent"
	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/sandbox"
)

// newUpCmd starts a sandbox instance: validates the input, starts the agent
// (detached unless --foreground), applies the objects and waits until every
// pod runs and every policy is enforced.
func newUpCmd() *cobra.Command {
	var inst instanceFlags
	var files []string
	var foreground bool
	var wait time.Duration
	var listen listenFlagValues
	var identityGrace time.Duration
	var ipv6, localDelivery bool
	var world []string
	var dnsReject string
	cmd := &cobra.Command{
		Use:   "up -f FILE|DIR...",
		Short: "Start a sandbox running the given workloads and policies (without -f: restart a stopped instance's agent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			stderr := cmd.ErrOrStderr()
			p, err := inst.paths()
			if err != nil {
				return err
			}
			// Root first: without it the state directory cannot even be
			// read, and any other complaint would mislead.
			if os.Geteuid() != 0 {
				return fmt.Errorf("bulwark up needs root (it creates network namespaces and loads BPF); run it as root")
			}
			// Without -f, up resumes an instance whose agent stopped: the
			// agent recovers its objects from the state directory.
			var docs []agentapi.Document
			if len(files) > 0 {
				if docs, err = readDocuments(cmd.InOrStdin(), files, true); err != nil {
					fmt.Fprintln(stderr, err)
					fmt.Fprintln(stderr, "nothing was started")
					return &ExitError{Code: 1}
				}
			} else if _, err := os.Stat(p.Objects); err != nil {
				return fmt.Errorf("no input: give -f FILE|DIR (instance %q has no saved state to resume)", p.Instance)
			}
			if _, err := sandbox.CleanWorldNames(world, ""); err != nil {
				fmt.Fprintf(stderr, "--world: %v\n", err)
				fmt.Fprintln(stderr, "nothing was started")
				return &ExitError{Code: 1}
			}
			if pid, _ := agent.RunningPID(p); pid != 0 {
				fmt.Fprintf(stderr, "instance %q is already running (agent pid %d, socket %s)\n", p.Instance, pid, p.Socket)
				fmt.Fprintf(stderr, "use 'bulwark apply -f ...' to change it, or 'bulwark down --instance %s' first\n", p.Instance)
				return &ExitError{Code: 1}
			}
			ctx := cmdContext(cmd)
			c := agentapi.NewClient(p.Socket)
			agentOpts := agent.Options{Paths: p, Foreground: foreground, IPv6: ipv6, IdentityGrace: identityGrace}
			listenFlags(cmd, &agentOpts, &listen)
			if cmd.Flags().Changed("world") {
				agentOpts.World = world // otherwise the agent keeps the instance's world
			}
			if cmd.Flags().Changed("local-delivery") {
				agentOpts.LocalDelivery = &localDelivery // otherwise the instance's setting
			}
			agentOpts.DNSReject = dnsReject // "" keeps the instance's setting
			var agentDone <-chan error
			agentPID := os.Getpid()
			if foreground {
				done := make(chan error, 1)
				sigCtx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
				defer stop()
				go func() { done <- agent.Run(sigCtx, agentOpts) }()
				agentDone = done
			} else {
				agentDone, agentPID, err = startDetached(p, agentOpts)
				if err != nil {
					return err
				}
			}
			if err := waitForAgent(ctx, c, agentDone, p, agentPID); err != nil {
				return err
			}
			if len(docs) > 0 {
				// The first apply creates every pod: bounded by --wait.
				resp, err := c.WithTimeout(max(wait, agentapi.DefaultTimeout)).Apply(ctx, agentapi.ApplyRequest{Documents: docs})
				if err != nil {
					return fmt.Errorf("apply: %w", err)
				}
				printChanges(cmd.OutOrStdout(), resp.Changes)
			}
			st, err := waitReady(ctx, c, wait, agentDone)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "sandbox %q is up: %d/%d pods ready, %d policies enforced (revision %d), datapath %s\n",
				st.Instance, st.PodsReady, st.Pods, st.Policies, st.Revision, st.DatapathMode)
			if st.HubbleAddr != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "hubble: %s   metrics: %s\n", st.HubbleAddr, st.MetricsAddr)
			}
			if !foreground {
				fmt.Fprintf(cmd.OutOrStdout(), "agent log: %s\n", p.LogFile)
				return nil
			}
			fmt.Fprintln(cmd.OutOrStdout(), "running in the foreground; Ctrl-C stops the agent (the sandbox stays; 'bulwark down' removes it)")
			return <-agentDone
		},
	}
	inst.register(cmd)
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "manifest file or directory (repeatable; - for stdin)")
	cmd.Flags().BoolVar(&foreground, "foreground", false, "run the agent in this process instead of detaching it")
	cmd.Flags().DurationVar(&wait, "wait", 3*time.Minute, "how long to wait for pods and policies to be ready")
	registerListenFlags(cmd, &listen)
	registerIdentityGraceFlag(cmd, &identityGrace)
	registerSandboxFlags(cmd, &ipv6, &world)
	registerLocalDeliveryFlag(cmd, &localDelivery)
	registerDNSRejectFlag(cmd, &dnsReject)
	return cmd
}

// registerListenFlags adds --hubble-listen and --metrics-listen, shared by
// up and agent. Given, they replace the instance's recorded addresses;
// omitted, the instance keeps them (a new instance takes the defaults).
func registerListenFlags(cmd *cobra.Command, l *listenFlagValues) {
	cmd.Flags().StringVar(&l.hubble, "hubble-listen", agent.DefaultHubbleListen,
		"Hubble gRPC TCP address, on loopback (without --hubble-tls readable by every local user; empty: root-only unix socket only; the instance keeps it)")
	cmd.Flags().StringVar(&l.metrics, "metrics-listen", agent.DefaultMetricsListen,
		"Prometheus listen address, on loopback (empty: off; the instance keeps it)")
	cmd.Flags().BoolVar(&l.tls, "hubble-tls", false,
		"serve Hubble's TCP listener over TLS with client certificates of the instance's own CA ('bulwark hubble certs' prints the hubble CLI's flags; the instance keeps it)")
}

// listenFlagValues are the values of the listen flags.
type listenFlagValues struct {
	hubble, metrics string
	tls             bool
}

// listenFlags sets the listen settings of o that the command line gave.
func listenFlags(cmd *cobra.Command, o *agent.Options, l *listenFlagValues) {
	if cmd.Flags().Changed("hubble-listen") {
		o.HubbleAddr = &l.hubble
	}
	if cmd.Flags().Changed("metrics-listen") {
		o.MetricsAddr = &l.metrics
	}
	if cmd.Flags().Changed("hubble-tls") {
		o.HubbleTLS = &l.tls
	}
}

// registerSandboxFlags adds the flags shaping the sandbox, shared by up and
// agent. Both persist in the instance's state: a later start without them
// keeps them.
func registerSandboxFlags(cmd *cobra.Command, ipv6 *bool, world *[]string) {
	cmd.Flags().BoolVar(ipv6, "ipv6", false, "dual-stack pods and services (sticks until 'bulwark down')")
	cmd.Flags().StringArrayVar(world, "world", nil, "a host name of the simulated outside world, served on ports 80 and 443 and resolvable by the pods (repeatable; replaces the previous set)")
}

// startDetached starts 'bulwark agent' in its own session with its output
// in the instance's log file. The returned channel yields the agent's exit
// if it dies while we wait for it.
func startDetached(p agent.Paths, o agent.Options) (<-chan error, int, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, 0, fmt.Errorf("find own executable: %w", err)
	}
	if err := os.MkdirAll(p.StateDir, 0o700); err != nil {
		return nil, 0, fmt.Errorf("create state directory: %w", err)
	}
	logf, err := os.OpenFile(p.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, 0, fmt.Errorf("open agent log: %w", err)
	}
	defer logf.Close()
	args := []string{"agent", "--instance", p.Instance, "--state-dir", p.StateDir, "--run-dir", parentDir(p.RunDir)}
	if o.HubbleAddr != nil {
		args = append(args, "--hubble-listen="+*o.HubbleAddr)
	}
	if o.MetricsAddr != nil {
		args = append(args, "--metrics-listen="+*o.MetricsAddr)
	}
	if o.HubbleTLS != nil {
		args = append(args, fmt.Sprintf("--hubble-tls=%t", *o.HubbleTLS))
	}
	if o.IPv6 {
		args = append(args, "--ipv6")
	}
	if o.IdentityGrace > 0 {
		args = append(args, "--identity-grace", o.IdentityGrace.String())
	}
	if o.LocalDelivery != nil {
		args = append(args, fmt.Sprintf("--local-delivery=%t", *o.LocalDelivery))
	}
	if o.DNSReject != "" {
		args = append(args, "--dns-reject-response", o.DNSReject)
	}
	for _, w := range o.World {
		args = append(args, "--world", w)
	}
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, 0, fmt.Errorf("start agent: %w", err)
	}
	done := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		if err == nil {
			err = errors.New("agent exited")
		}
		done <- err
	}()
	return done, cmd.Process.Pid, nil
}

func parentDir(dir string) string {
	for i := len(dir) - 1; i > 0; i-- {
		if dir[i] == '/' {
			return dir[:i]
		}
	}
	return dir
}

// waitForAgent polls the socket until our agent (pid) answers, or fails
// when it exits first (for example because another up won the race).
func waitForAgent(ctx context.Context, c *agentapi.Client, done <-chan error, p agent.Paths, pid int) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if st, err := c.Status(ctx); err == nil && st.PID == pid {
			return nil
		}
		select {
		case err := <-done:
			tail := tailFile(p.LogFile, 20)
			if why := lastErrorLine(tail); why != "" {
				// The agent's own error says what to change.
				return fmt.Errorf("agent failed to start: %s (log: %s)", why, p.LogFile)
			}
			return fmt.Errorf("agent failed to start: %v (log: %s)\n%s", err, p.LogFile, tail)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent did not answer on %s within 2m (log: %s)", c.Socket(), p.LogFile)
		}
	}
}

// waitReady polls the status until every pod is ready and every endpoint
// enforces the current revision.
func waitReady(ctx context.Context, c *agentapi.Client, wait time.Duration, done <-chan error) (agentapi.Status, error) {
	deadline := time.Now().Add(wait)
	for {
		st, err := c.Status(ctx)
		if err == nil && st.Ready {
			return st, nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return st, err
			}
			return st, fmt.Errorf("not ready after %s: %d/%d pods ready; errors: %v", wait, st.PodsReady, st.Pods, st.Errors)
		}
		select {
		case err := <-done:
			return st, fmt.Errorf("agent exited: %v", err)
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// lastErrorLine returns the last "Error: ..." line of an agent's log tail
// (what a failed 'bulwark agent' prints last), without the prefix.
func lastErrorLine(tail string) string {
	lines := strings.Split(strings.TrimRight(tail, "\n"), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if why, ok := strings.CutPrefix(lines[i], "Error: "); ok {
			return why
		}
	}
	return ""
}

func tailFile(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(f, 1<<20))
	lines := 0
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == '\n' {
			lines++
			if lines > n {
				return string(b[i+1:])
			}
		}
	}
	return string(b)
}
