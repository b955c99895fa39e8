// Package sandboxtest drives the real bulwark binary for the end-to-end
// tests under test/: TestMain builds cmd/bulwark once, each test brings up
// its own instance through the CLI, runs commands in its pods, and removes
// it with 'bulwark down' in t.Cleanup (checking that nothing is left).
//
// Everything here needs root; New skips the test otherwise.
package sandboxtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/bulwark-net/bulwark/internal/agent"
	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/sandbox"
	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
)

// binary is the bulwark binary Main built ("" before, or when not root).
var binary string

// Main is a package's TestMain: as root it builds cmd/bulwark (and
// cmd/bulwark-cni beside it) into a
// temporary directory, runs the tests and removes the directory; without
// root every test skips and nothing is built. It exits the process.
func Main(m *testing.M) {
	if os.Geteuid() != 0 {
		os.Exit(m.Run()) // every test skips
	}
	dir, err := os.MkdirTemp("", "bulwark-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "bulwark")
	root, err := RepoRoot()
	if err == nil {
		// bulwark-cni beside it: `bulwark cluster up --cni bulwark`
		// installs the plugin found next to its own executable.
		build := exec.Command("go", "build", "-o", dir+"/", "./cmd/bulwark", "./cmd/bulwark-cni")
		build.Dir = root
		var out []byte
		if out, err = build.CombinedOutput(); err != nil {
			err = fmt.Errorf("%w\n%s", err, out)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "build bulwark: %v\n", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Binary is the path of the binary under test.
func Binary() string { return binary }

var repoRoot = sync.OnceValues(func() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the bulwark module")
	}
	return filepath.Dir(mod), nil
})

// RepoRoot is the module's root directory.
func RepoRoot() (string, error) { return repoRoot() }

// Seed is the path of a seed manifest in testdata/seed.
func Seed(t testing.TB, name string) string {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, "testdata", "seed", name)
}

// Options shape an instance's CLI runs.
type Options struct {
	// Prefix starts the instance name (a random suffix follows).
	Prefix string
	// MetricsListen is 'up --metrics-listen' ("" turns metrics off).
	MetricsListen string
	// CombinedOutput sends stderr to the same buffer as stdout: Run
	// returns both, interleaved as written, as stdout and "" as stderr.
	CombinedOutput bool
	// Timeout bounds each CLI run (0: none).
	Timeout time.Duration
}

// Instance is one sandbox instance driven through the CLI.
type Instance struct {
	t         *testing.T
	opts      Options
	Name      string
	StateRoot string
}

// New names a fresh instance and registers its teardown: 'bulwark down'
// must succeed and leave no network namespace and no bpffs pins of it.
// It skips the test without root.
func New(t *testing.T, opts Options) *Instance {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veths and BPF programs")
	}
	b := make([]byte, 3)
	rand.Read(b)
	in := &Instance{t: t, opts: opts, Name: opts.Prefix + "-" + hex.EncodeToString(b), StateRoot: t.TempDir()}
	t.Cleanup(func() {
		out, errOut, code := in.Run("down")
		if code != 0 {
			t.Errorf("bulwark down: exit %d: %s%s", code, out, errOut)
		}
		ents, _ := os.ReadDir(netns.Dir)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "bwk-"+in.Name+"-") {
				t.Errorf("netns %s left after down", e.Name())
			}
		}
		if _, err := os.Stat(filepath.Join(agent.DefaultPinRoot, in.Name)); err == nil {
			t.Errorf("bpffs pins of %s left after down", in.Name)
		}
	})
	return in
}

// Paths are the instance's files (default run root, its state root).
func (in *Instance) Paths() agent.Paths {
	return agent.NewPaths(agent.PathsOptions{Instance: in.Name, StateRoot: in.StateRoot})
}

// Args appends the flags that select this instance to a CLI command line.
func (in *Instance) Args(args ...string) []string {
	return append(args, "--instance", in.Name, "--state-root", in.StateRoot)
}

// Run runs the CLI for the instance ('up' also gets an ephemeral Hubble
// port, Options.MetricsListen and a two-minute --wait); it returns stdout,
// stderr and the exit status.
func (in *Instance) Run(args ...string) (string, string, int) {
	in.t.Helper()
	args = in.Args(args...)
	if args[0] == "up" {
		args = append(args, "--hubble-listen", "127.0.0.1:0", "--metrics-listen", in.opts.MetricsListen, "--wait", "2m")
	}
	ctx := context.Background()
	if in.opts.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, in.opts.Timeout)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, binary, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if in.opts.CombinedOutput {
		cmd.Stderr = &stdout
	}
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		in.t.Fatalf("run bulwark %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

// MustRun runs the CLI and fails the test (with the agent's log) unless
// it exits 0; it returns stdout.
func (in *Instance) MustRun(args ...string) string {
	in.t.Helper()
	out, errOut, code := in.Run(args...)
	if code != 0 {
		in.t.Fatalf("bulwark %s: exit %d\nstdout: %s\nstderr: %s\nagent log:\n%s", strings.Join(args, " "), code, out, errOut, in.AgentLog())
	}
	return out
}

// AgentLog is the end of the agent's log file.
func (in *Instance) AgentLog() string {
	b, _ := os.ReadFile(in.Paths().LogFile)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// Client is the instance's agent API client.
func (in *Instance) Client() *agentapi.Client { return agentapi.NewClient(in.Paths().Socket) }

// Status asks the agent for its status.
func (in *Instance) Status() agentapi.Status {
	in.t.Helper()
	st, err := in.Client().Status(context.Background())
	if err != nil {
		in.t.Fatalf("status: %v", err)
	}
	return st
}

// Pod finds a pod of namespace demo ("deploy/backend", "intruder").
func (in *Instance) Pod(target string) sandbox.PodInfo {
	in.t.Helper()
	st, err := sandbox.ReadState("", in.Name)
	if err != nil {
		in.t.Fatal(err)
	}
	p, err := st.FindPod("demo", target)
	if err != nil {
		in.t.Fatal(err)
	}
	return p
}

// Exec runs a command in a demo pod (what 'bulwark exec' runs) and returns
// its combined output and exit status.
func (in *Instance) Exec(target string, command ...string) (string, int) {
	in.t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code, err := sandbox.Exec(ctx, sandbox.ExecOptions{
		Instance: in.Name, Namespace: "demo", Target: target, Command: command,
		Stdin: strings.NewReader(""), Stdout: &out, Stderr: &out,
	})
	if err != nil {
		in.t.Fatalf("exec %s %v: %v", target, command, err)
	}
	return out.String(), code
}

// HTTP fetches url from a pod: one try, two seconds.
func (in *Instance) HTTP(from, url string) (string, bool) {
	in.t.Helper()
	out, code := in.Exec(from, "wget", "--timeout=2", "--tries=1", "-q", "-O-", url)
	return out, code == 0
}

// TCP opens (and closes) a TCP connection from a pod; it reports success.
func (in *Instance) TCP(from, host, port string) bool {
	in.t.Helper()
	_, code := in.Exec(from, "nc", "-w", "2", "-z", host, port)
	return code == 0
}

// Resolves reports whether name resolves in a pod.
func (in *Instance) Resolves(from, name string) bool {
	in.t.Helper()
	_, code := in.Exec(from, "getent", "hosts", name)
	return code == 0
}

// ExpectHTTP fails the test unless url answers from a pod with a body
// containing wantInBody.
func (in *Instance) ExpectHTTP(from, url, wantInBody string) {
	in.t.Helper()
	body, ok := in.HTTP(from, url)
	if !ok || !strings.Contains(body, wantInBody) {
		in.t.Errorf("%s -> %s: want an answer containing %q, got ok=%v %q", from, url, wantInBody, ok, body)
	}
}

// ExpectHTTPBlocked fails the test when url answers from a pod.
func (in *Instance) ExpectHTTPBlocked(from, url string) {
	in.t.Helper()
	if body, ok := in.HTTP(from, url); ok {
		in.t.Errorf("%s -> %s: want blocked, got an answer %q", from, url, body)
	}
}

// ExpectTCP fails the test unless a TCP connection from a pod succeeds
// exactly when open.
func (in *Instance) ExpectTCP(from, host, port string, open bool) {
	in.t.Helper()
	if got := in.TCP(from, host, port); got != open {
		in.t.Errorf("%s -> %s:%s: connected=%v, want %v", from, host, port, got, open)
	}
}

// DeniedBy reports whether policy (by name) denied the flow, at egress or
// ingress.
func DeniedBy(f *flowpb.Flow, policy string) bool {
	for _, p := range append(f.GetIngressDeniedBy(), f.GetEgressDeniedBy()...) {
		if p.GetName() == policy {
			return true
		}
	}
	return false
}
