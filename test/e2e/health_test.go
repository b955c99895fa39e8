package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/bulwark-net/bulwark/internal/agent"
	"github.com/bulwark-net/bulwark/test/sandboxtest"
)

// TestAgentHealthEndpoint runs the real agent with --health-addr, as the
// DaemonSet does: /healthz answers while it runs, /readyz turns 200 once
// the datapath is loaded and the state synced, and by then the agent API
// answers too; SIGTERM stops it cleanly.
func TestAgentHealthEndpoint(t *testing.T) {
	t.Parallel()
	in := sandboxtest.New(t, sandboxtest.Options{Prefix: "e2e-health"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(sandboxtest.Binary(), in.Args("agent", "--foreground", "--log-level=info",
		"--health-addr="+addr, "--hubble-listen=127.0.0.1:0", "--metrics-listen=")...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-exited
		}
	}()

	get := func(path string) (int, agent.HealthStatus, error) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, agent.HealthStatus{}, err
		}
		defer resp.Body.Close()
		var st agent.HealthStatus
		err = json.NewDecoder(resp.Body).Decode(&st)
		return resp.StatusCode, st, err
	}
	deadline := time.Now().Add(2 * time.Minute)
	var last agent.HealthStatus
	for {
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("agent exited before ready: %v\n%s", err, out.String())
		default:
		}
		code, st, err := get("/readyz")
		if err == nil && code == http.StatusOK {
			if st.Status != "ok" || len(st.Pending) != 0 {
				t.Fatalf("/readyz 200 with %+v", st)
			}
			break
		}
		if err == nil {
			if code != http.StatusServiceUnavailable || len(st.Pending) == 0 {
				t.Fatalf("/readyz before ready: %d %+v, want 503 naming what is pending", code, st)
			}
			last = st
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready after 2m (last %+v, %v)\n%s", last, err, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code, st, err := get("/healthz"); err != nil || code != http.StatusOK || st.Status != "ok" {
		t.Fatalf("/healthz of a ready agent: %d %+v %v", code, st, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := in.Client().Status(ctx); err != nil {
		t.Fatalf("agent API of a ready agent: %v", err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopped = true
	if err := <-exited; err != nil {
		t.Fatalf("agent after SIGTERM: %v\n%s", err, out.String())
	}
	if _, _, err := get("/healthz"); err == nil {
		t.Errorf("the health endpoint still answers after the agent exited")
	}
}
