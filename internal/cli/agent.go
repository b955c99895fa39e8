package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/agent"
	"github.com/bulwark-net/bulwark/internal/agentapi"
)

// instanceFlags locate one instance's agent: its name, and the run and state
// roots (overridable for tests).
type instanceFlags struct {
	instance  string
	runDir    string
	stateRoot string
	timeout   time.Duration // each call to the agent; see registerTimeout
}

// registerTimeout adds --timeout, the bound on each call to the agent.
func (f *instanceFlags) registerTimeout(cmd *cobra.Command) {
	cmd.Flags().DurationVar(&f.timeout, "timeout", agentapi.DefaultTimeout,
		"how long to wait for the agent's answer (a change it had not committed by then is not applied)")
}

func (f *instanceFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.instance, "instance", "default", "sandbox instance name")
	cmd.Flags().StringVar(&f.runDir, "run-dir", agentapi.DefaultRunDir, "directory of the instances' sockets and pid files")
	cmd.Flags().StringVar(&f.stateRoot, "state-root", agentapi.DefaultStateRoot, "directory of the instances' persistent state")
	_ = cmd.Flags().MarkHidden("run-dir")
	_ = cmd.Flags().MarkHidden("state-root")
}

func (f *instanceFlags) paths() (agent.Paths, error) {
	if err := agent.ValidInstanceName(f.instance); err != nil {
		return agent.Paths{}, err
	}
	return agent.NewPaths(agent.PathsOptions{Instance: f.instance, RunRoot: f.runDir, StateRoot: f.stateRoot}), nil
}

func (f *instanceFlags) client() (*agentapi.Client, error) {
	p, err := f.paths()
	if err != nil {
		return nil, err
	}
	c := agentapi.NewClient(p.Socket)
	if f.timeout > 0 {
		c = c.WithTimeout(f.timeout)
	}
	return c, nil
}

// explainAgentError adds the agent's pid to a call it did not answer:
// "agent not responding (pid N): ...".
func (f *instanceFlags) explainAgentError(err error) error {
	var nr *agentapi.NotRespondingError
	if !errors.As(err, &nr) {
		return err
	}
	pid := 0
	if p, perr := f.paths(); perr == nil {
		pid, _ = agent.RunningPID(p)
	}
	if pid != 0 && processStopped(pid) {
		return fmt.Errorf("agent not responding (pid %d, stopped by a signal: 'kill -CONT %d' resumes it): %w", pid, pid, err)
	}
	return fmt.Errorf("agent not responding (pid %d): %w", pid, err)
}

// processStopped reports whether pid is stopped (state T in /proc).
func processStopped(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] == 'T'
}

// newAgentCmd runs the long-lived agent of an instance.
func newAgentCmd() *cobra.Command {
	var inst instanceFlags
	var opts agent.Options
	var stateDir string
	var localDelivery bool
	var listen listenFlagValues
	var kube kubeFlags
	logLevel := logLevelValue{level: slog.LevelDebug}
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the Bulwark agent of a sandbox instance (normally started by 'bulwark up')",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Geteuid() != 0 {
				return fmt.Errorf("the agent needs root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN)")
			}
			p, err := inst.paths()
			if err != nil {
				return err
			}
			if kube.enabled && !cmd.Flags().Changed("instance") {
				// The socket the CNI configuration names by default.
				inst.instance = kubeInstance
				if p, err = inst.paths(); err != nil {
					return err
				}
			}
			if stateDir != "" {
				p = p.WithStateDir(stateDir)
			}
			opts.Paths = p
			if !cmd.Flags().Changed("world") {
				opts.World = nil // keep the instance's world
			}
			if cmd.Flags().Changed("local-delivery") {
				opts.LocalDelivery = &localDelivery // otherwise the instance's setting
			}
			listenFlags(cmd, &opts, &listen)
			if cmd.Flags().Changed("log-level") {
				opts.LogLevel = &logLevel.level
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if kube.enabled {
				return runKubeAgent(ctx, opts, kube)
			}
			return agent.Run(ctx, opts)
		},
	}
	inst.register(cmd)
	cmd.Flags().StringVar(&stateDir, "state-dir", "", "state directory (default /var/lib/bulwark/<instance>)")
	cmd.Flags().BoolVar(&opts.Foreground, "foreground", false, "log to stderr (the agent always runs in the calling process)")
	registerListenFlags(cmd, &listen)
	registerIdentityGraceFlag(cmd, &opts.IdentityGrace)
	registerSandboxFlags(cmd, &opts.IPv6, &opts.World)
	registerLocalDeliveryFlag(cmd, &localDelivery)
	registerDNSRejectFlag(cmd, &opts.DNSReject)
	kube.register(cmd)
	cmd.Flags().StringVar(&opts.HealthAddr, "health-addr", "",
		"serve /healthz (liveness) and /readyz (ready once the datapath is loaded and the desired state synced) on this address, e.g. "+agent.DefaultHealthListen+" for the kubelet's probes (empty: off)")
	cmd.Flags().Var(&logLevel, "log-level", "lowest level logged: debug, info, warn or error")
	return cmd
}

// logLevelValue is --log-level: a slog level by name, checked when parsed.
type logLevelValue struct{ level slog.Level }

func (v *logLevelValue) String() string { return strings.ToLower(v.level.String()) }
func (v *logLevelValue) Type() string   { return "level" }

func (v *logLevelValue) Set(s string) error {
	switch strings.ToLower(s) {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("%q is not a log level: debug, info, warn or error", s)
	}
	return v.level.UnmarshalText([]byte(s))
}

// registerIdentityGraceFlag adds the hidden --identity-grace (tests).
func registerIdentityGraceFlag(cmd *cobra.Command, d *time.Duration) {
	cmd.Flags().DurationVar(d, "identity-grace", 0, "how long an unused identity keeps its number (default 1m)")
	_ = cmd.Flags().MarkHidden("identity-grace")
}

// registerDNSRejectFlag adds --dns-reject-response (Cilium's
// --tofqdns-dns-reject-response-code).
func registerDNSRejectFlag(cmd *cobra.Command, v *string) {
	cmd.Flags().StringVar(v, "dns-reject-response", "",
		"how the DNS proxy answers queries no rules.dns allows: refused (default) or nxdomain (the instance keeps the setting)")
}

// registerLocalDeliveryFlag adds --local-delivery (on for a new instance;
// an instance keeps its setting until the flag is given again).
func registerLocalDeliveryFlag(cmd *cobra.Command, on *bool) {
	cmd.Flags().BoolVar(on, "local-delivery", true,
		"decide pod-to-pod packets at the source pod's hook for both pods and hand them to the destination pod directly; false: through the node's IP stack and netfilter (the instance keeps the setting)")
}

// outputFlag holds -o and checks its value.
type outputFlag struct {
	format  string
	allowed []string
}

func (o *outputFlag) register(cmd *cobra.Command, allowed ...string) {
	o.allowed = append([]string{""}, allowed...)
	cmd.Flags().StringVarP(&o.format, "output", "o", "", "output format: "+joinOr(allowed))
}

func (o *outputFlag) check() error {
	if len(o.allowed) == 0 {
		return nil // the command registers no --output
	}
	for _, a := range o.allowed {
		if o.format == a {
			return nil
		}
	}
	return fmt.Errorf("--output %q: must be one of %s", o.format, joinOr(o.allowed[1:]))
}

func joinOr(s []string) string {
	out := ""
	for i, v := range s {
		switch {
		case i == 0:
		case i == len(s)-1:
			out += " or "
		default:
			out += ", "
		}
		out += v
	}
	return out
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
}

func cmdContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

// absPaths makes file arguments absolute for messages and for the agent.
func absPaths(in []string) []string {
	out := make([]string, len(in))
	for i, p := range in {
		if a, err := filepath.Abs(p); err == nil {
			out[i] = a
		} else {
			out[i] = p
		}
	}
	return out
}
