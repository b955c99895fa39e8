package e2e

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bulwark-net/bulwark/internal/agent"
	"github.com/bulwark-net/bulwark/test/sandboxtest"
)

// namespaceOnly is the smallest input 'up' takes: no pods to wait for.
const namespaceOnly = `apiVersion: v1
kind: Namespace
metadata:
  name: demo
`

// runBinary runs the CLI with exactly args (sandboxtest's Run adds its
// own listen flags to 'up'); it returns the combined output and status.
func runBinary(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(sandboxtest.Binary(), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run bulwark %v: %v", args, err)
	}
	return out.String(), 0
}

// freePort returns a loopback address no one listens on (now).
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestInstanceListeners: an instance's CLI commands only talk to that
// instance. A second instance whose Hubble address is taken does not
// start (the error names the address and the flag); its observe does not
// reach the first instance; a restart without flags keeps the addresses
// it was given.
func TestInstanceListeners(t *testing.T) {
	t.Parallel()
	a := sandboxtest.New(t, sandboxtest.Options{Prefix: "e2e-la"})
	b := sandboxtest.New(t, sandboxtest.Options{Prefix: "e2e-lb"})
	manifest := filepath.Join(t.TempDir(), "ns.yaml")
	if err := os.WriteFile(manifest, []byte(namespaceOnly), 0o600); err != nil {
		t.Fatal(err)
	}
	a.MustRun("up", "-f", manifest)
	taken := a.Status().HubbleAddr
	if taken == "" {
		t.Fatal("instance a has no Hubble TCP address")
	}

	// b asks for a's Hubble port: up fails, naming address and flag.
	out, code := runBinary(t, b.Args("up", "-f", manifest, "--hubble-listen", taken, "--metrics-listen=", "--wait", "1m")...)
	if code == 0 {
		t.Fatalf("up of b on a's Hubble address %s exited 0:\n%s", taken, out)
	}
	for _, want := range []string{taken, "--hubble-listen", "in use"} {
		if !strings.Contains(out, want) {
			t.Errorf("up of b on a taken address: output lacks %q:\n%s", want, out)
		}
	}
	// b's observe and monitor fail naming b's socket; they never fall
	// back to a default address (a's).
	for _, cmd := range []string{"observe", "monitor"} {
		if out, code := runBinary(t, b.Args(cmd)...); code == 0 || !strings.Contains(out, "no Hubble socket") || !strings.Contains(out, b.Name) {
			t.Errorf("%s of b (not running): exit %d, want b's own socket named:\n%s", cmd, code, out)
		}
	}

	// b with its own addresses runs; a restart without flags keeps them.
	hubbleB, metricsB := freePort(t), freePort(t)
	if out, code := runBinary(t, b.Args("up", "-f", manifest, "--hubble-listen", hubbleB, "--metrics-listen", metricsB, "--wait", "1m")...); code != 0 {
		t.Fatalf("up of b: exit %d:\n%s\n%s", code, out, b.AgentLog())
	}
	st := b.Status()
	if st.HubbleAddr != hubbleB || st.MetricsAddr != metricsB || st.HubbleSock != b.Paths().Hubble {
		t.Fatalf("b listens on %s, %s, %s; want %s, %s, %s", st.HubbleAddr, st.MetricsAddr, st.HubbleSock, hubbleB, metricsB, b.Paths().Hubble)
	}
	if fi, err := os.Stat(st.HubbleSock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("Hubble socket %s: %v, mode %v; want 0600 (root only)", st.HubbleSock, err, fi.Mode())
	}
	pid, _ := agent.RunningPID(b.Paths())
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if p, _ := agent.RunningPID(b.Paths()); p == 0 {
			break
		}
		if i > 300 {
			t.Fatalf("agent %d still runs after SIGTERM", pid)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Its Hubble port taken meanwhile: the restart fails, naming it.
	squatter, err := net.Listen("tcp", hubbleB)
	if err != nil {
		t.Fatal(err)
	}
	out, code = runBinary(t, b.Args("up", "--wait", "1m")...)
	squatter.Close()
	if code == 0 || !strings.Contains(out, hubbleB) || !strings.Contains(out, "--hubble-listen") {
		t.Errorf("restart of b with its Hubble address taken: exit %d, want the address and flag named:\n%s", code, out)
	}
	if out, code := runBinary(t, b.Args("up", "--wait", "1m")...); code != 0 {
		t.Fatalf("restart of b: exit %d:\n%s\n%s", code, out, b.AgentLog())
	}
	if st := b.Status(); st.HubbleAddr != hubbleB || st.MetricsAddr != metricsB {
		t.Errorf("after restart b listens on %s, %s; want %s, %s", st.HubbleAddr, st.MetricsAddr, hubbleB, metricsB)
	}
	if out, code := runBinary(t, b.Args("observe", "--last", "1")...); code != 0 {
		t.Errorf("observe of b after restart: exit %d:\n%s", code, out)
	}
}

// TestHubbleTLSStockCLI: an instance started with --hubble-tls answers the
// stock hubble CLI given 'bulwark hubble certs', and only with the client
// certificate. HUBBLE_BIN names a built hubble CLI (see
// internal/observer's stockHubble); without it the test skips.
func TestHubbleTLSStockCLI(t *testing.T) {
	t.Parallel()
	hubble := os.Getenv("HUBBLE_BIN")
	if hubble == "" {
		t.Skip("set HUBBLE_BIN to a built stock hubble CLI (internal/observer's test builds one)")
	}
	in := sandboxtest.New(t, sandboxtest.Options{Prefix: "e2e-tls", CombinedOutput: true})
	manifest := filepath.Join(t.TempDir(), "ns.yaml")
	if err := os.WriteFile(manifest, []byte(namespaceOnly), 0o600); err != nil {
		t.Fatal(err)
	}
	in.MustRun("up", "-f", manifest, "--hubble-tls")
	flags := strings.Fields(in.MustRun("hubble", "certs"))
	run := func(args ...string) (string, error) {
		cmd := exec.Command(hubble, args...)
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run(append([]string{"status"}, flags...)...); err != nil || !strings.Contains(out, "Healthcheck") {
		t.Errorf("hubble status with 'bulwark hubble certs': %v\n%s", err, out)
	}
	// Without the client certificate (and in plaintext): refused.
	server := flags[1]
	if out, err := run("status", "--server", server, "--timeout", "5s"); err == nil {
		t.Errorf("plaintext hubble status against the TLS listener succeeded:\n%s", out)
	}
	noCert := []string{"status", "--server", server, "--timeout", "5s", "--tls", "--tls-ca-cert-files", in.Paths().HubbleTLS().CA,
		"--tls-server-name", in.Paths().HubbleTLS().ServerName}
	if out, err := run(noCert...); err == nil {
		t.Errorf("hubble status without a client certificate succeeded:\n%s", out)
	}
}
