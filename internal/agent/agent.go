// Package agent is Bulwark's long-running agent for one sandbox instance.
// It owns the desired objects (persisted in the state directory), turns them
// into pods, services and DNS records through the sandbox, resolves the
// policies through the policy engine, pushes the result into the datapath,
// feeds datapath events to the observer and serves the local API.
//
// Invariants:
//   - Fail closed: a new pod's endpoint is attached in the not-ready state
//     (drop all) before its workload starts, and becomes ready only when
//     the datapath has loaded its policy.
//   - All or nothing: a change whose documents do not decode, validate and
//     resolve is rejected whole; the desired state and the datapath are
//     untouched.
//   - Restart keeps traffic: the datapath's pins and the sandbox's pods
//     outlive the agent; a new agent adopts them and re-syncs the same
//     content.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/datapath"
	"github.com/bulwark-net/bulwark/internal/fqdn"
	"github.com/bulwark-net/bulwark/internal/sandbox"
)

// Options configure Run.
type Options struct {
	Paths Paths
	// Foreground logs to stderr; otherwise the log goes to Paths.LogFile.
	Foreground bool
	// HubbleAddr is the Hubble gRPC TCP address ("" = unix socket only);
	// MetricsAddr the Prometheus address ("" = off). nil keeps the
	// instance's recorded address (DefaultHubbleListen and
	// DefaultMetricsListen for a new instance). Both must be on loopback;
	// they persist with the instance (see listenConfig).
	HubbleAddr  *string
	MetricsAddr *string
	// HubbleTLS, when set, turns TLS with client certificates on or off
	// for the Hubble TCP listener (see hubbleTLSConfig); nil keeps the
	// instance's setting, off by default. It persists like the addresses.
	HubbleTLS *bool
	// IPv6 makes the instance's pods and services dual stack; it sticks
	// (an instance created dual stack stays so until 'bulwark down').
	// World, when not nil, replaces the names the simulated outside world
	// serves and the cluster DNS answers; nil keeps the previous names.
	// Both persist in the state directory (see sandboxConfig).
	IPv6  bool
	World []string
	// LocalDelivery, when set, turns local delivery on or off for this
	// instance (datapath.Options.DisableLocalDelivery); nil keeps the
	// instance's setting, on by default. It persists like IPv6.
	LocalDelivery *bool
	// IdentityGrace is how long an identity nothing uses keeps its number
	// before it is freed (0: a minute).
	IdentityGrace time.Duration
	// FQDN bounds and times the names pods learn through the DNS proxy
	// (zero values: fqdn's defaults).
	FQDN fqdn.Options
	// DNSReject, when set, is how the DNS proxy answers denied queries
	// ("refused" or "nxdomain"); it persists like IPv6.
	DNSReject string
	// HealthAddr is where the kubelet's probes reach /healthz and
	// /readyz ("" = no endpoint; see Health).
	HealthAddr string
	// LogLevel is the lowest level logged (zero: debug, the sandbox's
	// default).
	LogLevel *slog.Level
	// Log overrides the logger (tests).
	Log *slog.Logger
}

// Agent is a running agent. Its exported methods implement agentapi.Backend.
type Agent struct {
	opts    Options
	log     *slog.Logger
	started time.Time

	// mu serialises changes: apply, delete and reconcile passes.
	mu    sync.Mutex
	store *store
	node  *node // the sandbox, datapath, engine and observer, once open

	errMu  sync.Mutex
	errors []string // recent reconcile errors, newest last

	shutdown chan agentapi.ShutdownRequest

	ui        uiServer   // the service map, once 'bulwark ui' asked for it
	listeners *listeners // bound before the node opens; the event pump serves them
	health    *Health    // readiness: the datapath loaded and the source synced
}

// openAgent takes what an agent holds for its whole life, in either mode:
// the instance lock, the state directory, the bound listeners, the health
// endpoint and the log. close releases them, the health endpoint failing
// first.
func openAgent(opts Options) (_ *Agent, close func(), err error) {
	var undo []func()
	release := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	defer func() {
		// Every error return sets close to nil: release through the
		// local, not the named result.
		if err != nil {
			release()
		}
	}()
	lock, err := AcquireLock(opts.Paths)
	if err != nil {
		return nil, nil, err
	}
	undo = append(undo, func() { lock.Release() })
	if err := os.MkdirAll(opts.Paths.StateDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("create state directory: %w", err)
	}
	// Bind before touching anything: an instance that cannot listen
	// where it should does not start (and never serves another
	// instance's clients by falling back elsewhere).
	listenCfg, err := wantedListenConfig(opts.Paths, opts)
	if err != nil {
		return nil, nil, err
	}
	lns, err := bindListeners(listenCfg)
	if err != nil {
		return nil, nil, err
	}
	undo = append(undo, lns.close)
	health := NewHealth(ReadyDatapath, ReadySource)
	stopHealth, err := startHealth(health, opts.HealthAddr)
	if err != nil {
		return nil, nil, err
	}
	undo = append(undo, stopHealth, health.Stopping)
	if err := writeListenConfig(opts.Paths, listenCfg); err != nil {
		return nil, nil, err
	}
	log := opts.Log
	if log == nil {
		var w io.Writer = os.Stderr
		if !opts.Foreground {
			// Rotated by size; the process's own output (started by
			// 'bulwark up' into the same file) follows it.
			f, err := openRotatingLog(opts.Paths.LogFile, defaultLogMaxSize, defaultLogKeep, true)
			if err != nil {
				return nil, nil, err
			}
			undo = append(undo, func() { f.Close() })
			w = f
		}
		level := slog.LevelDebug
		if opts.LogLevel != nil {
			level = *opts.LogLevel
		}
		log = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
	}
	return &Agent{
		opts: opts, listeners: lns, health: health, log: log, started: time.Now(),
		shutdown: make(chan agentapi.ShutdownRequest, 1),
	}, release, nil
}

// Run runs the agent until ctx ends or a client asks it to shut down. It
// holds the instance lock for its whole life.
func Run(ctx context.Context, opts Options) (err error) {
	a, closeBase, err := openAgent(opts)
	if err != nil {
		return err
	}
	defer closeBase()
	a.log = a.log.With("instance", opts.Paths.Instance)
	health := a.health
	a.log.Info("agent starting", "pid", os.Getpid(), "state", opts.Paths.StateDir)
	defer a.ui.close()
	if a.store, err = openStore(opts.Paths.Objects); err != nil {
		return err
	}
	if a.node, err = openNode(ctx, a); err != nil {
		return fmt.Errorf("open node: %w", err)
	}
	health.Set(ReadyDatapath, nil)
	closed := false
	defer func() {
		if !closed {
			a.node.close()
		}
	}()
	// Adopt what exists and converge to the persisted desired state before
	// answering clients, so that status is meaningful from the first call.
	a.mu.Lock()
	if err := a.reconcileLocked(ctx); err != nil {
		a.recordError(err)
	}
	a.mu.Unlock()

	srv, err := agentapi.Listen(opts.Paths.Socket, a)
	if err != nil {
		return err
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve() }()
	a.log.Info("agent ready", "socket", opts.Paths.Socket)
	// Synced: the persisted state was read and pushed once and the API
	// (the CNI plugin's too) answers. A pass that failed for some objects
	// is reported by status, not by readiness.
	health.Set(ReadySource, nil)

	var req agentapi.ShutdownRequest
	resync := time.NewTicker(30 * time.Second)
	defer resync.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case req = <-a.shutdown:
			break loop
		case err := <-serveErr:
			return fmt.Errorf("serve API: %w", err)
		case <-resync.C:
			// Converge again: restarts crashed workloads, retries
			// failed pods, re-pushes tables.
			a.reconcile(ctx)
		}
	}
	a.log.Info("agent stopping", "destroy", req.Destroy)
	health.Stopping()
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = srv.Close(shutCtx)
	cancel()
	a.mu.Lock()
	defer a.mu.Unlock()
	closed = true
	if req.Destroy {
		return a.node.destroy()
	}
	a.node.close()
	return nil
}

func (a *Agent) reconcile(ctx context.Context) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.reconcileLocked(ctx); err != nil {
		a.recordError(err)
	}
}

func (a *Agent) recordError(err error) {
	a.log.Error("reconcile", "err", err)
	a.errMu.Lock()
	defer a.errMu.Unlock()
	a.errors = append(a.errors, time.Now().UTC().Format(time.RFC3339)+" "+err.Error())
	if len(a.errors) > 10 {
		a.errors = a.errors[len(a.errors)-10:]
	}
}

func (a *Agent) clearErrors() {
	a.errMu.Lock()
	a.errors = nil
	a.errMu.Unlock()
}

func (a *Agent) recentErrors() []string {
	a.errMu.Lock()
	defer a.errMu.Unlock()
	return append([]string(nil), a.errors...)
}

// Shutdown implements agentapi.Backend: the main loop stops the agent
// after this call has answered.
func (a *Agent) Shutdown(_ context.Context, req agentapi.ShutdownRequest) error {
	select {
	case a.shutdown <- req:
		return nil
	default:
		return errors.New("shutdown already in progress")
	}
}

// Teardown removes everything an instance left, without a running agent:
// the sandbox (processes, namespaces, cgroup, pins), the datapath's pins
// and links, the state and run directories. Idempotent. It refuses while
// an agent holds the instance.
func Teardown(_ context.Context, p Paths) error {
	lock, err := AcquireLock(p)
	if err != nil {
		return err
	}
	defer lock.Release()
	var errs []error
	pins := datapathPinDir(p)
	if _, err := os.Stat(pins); err == nil {
		dp, err := datapath.Open(datapath.Options{PinDir: pins, ConntrackGCInterval: -1})
		if err != nil {
			errs = append(errs, fmt.Errorf("open datapath pins: %w", err))
		} else if err := dp.Destroy(); err != nil {
			errs = append(errs, fmt.Errorf("destroy datapath: %w", err))
		}
	}
	if err := sandbox.TeardownWith(sandbox.TeardownOptions{Instance: p.Instance, StateRoot: p.RunRoot, BPFFSRoot: p.PinRoot}); err != nil {
		errs = append(errs, fmt.Errorf("tear down sandbox: %w", err))
	}
	for _, dir := range []string{p.PinDir, p.StateDir, p.RunDir} {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	// The shared roots go too once the last instance has left them
	// (os.Remove refuses a non-empty directory); a user's --state-dir
	// parent is never touched.
	_ = os.Remove(p.PinRoot)
	_ = os.Remove(p.RunRoot)
	if filepath.Dir(p.StateDir) == agentapi.DefaultStateRoot {
		_ = os.Remove(agentapi.DefaultStateRoot)
	}
	return errors.Join(errs...)
}
