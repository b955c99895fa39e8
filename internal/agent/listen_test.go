package agent

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testListenPaths(t *testing.T) Paths {
	t.Helper()
	root := t.TempDir()
	return NewPaths(PathsOptions{Instance: "t", RunRoot: filepath.Join(root, "run"), StateRoot: filepath.Join(root, "state")})
}

// A new instance takes the defaults; given addresses replace the recorded
// ones and persist; a start without them keeps what was recorded.
func TestListenConfigKeptAcrossStarts(t *testing.T) {
	p := testListenPaths(t)
	c, err := wantedListenConfig(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if c.HubbleTCP != DefaultHubbleListen || c.Metrics != DefaultMetricsListen || c.HubbleSocket != p.Hubble {
		t.Fatalf("new instance: %+v; want the defaults and %s", c, p.Hubble)
	}
	hubble, metrics := "127.0.0.1:14245", ""
	c, err = wantedListenConfig(p, Options{HubbleAddr: &hubble, MetricsAddr: &metrics})
	if err != nil {
		t.Fatal(err)
	}
	if err := writeListenConfig(p, c); err != nil {
		t.Fatal(err)
	}
	got, err := wantedListenConfig(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got.HubbleTCP != hubble || got.Metrics != "" {
		t.Errorf("restart without flags: %+v; want hubble %s, metrics off", got, hubble)
	}
	la, err := ReadListenAddrs(p)
	if err != nil || la.HubbleTCP != hubble || la.HubbleSocket != p.Hubble {
		t.Errorf("ReadListenAddrs = %+v, %v", la, err)
	}
	other := testListenPaths(t)
	if _, err := ReadListenAddrs(other); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadListenAddrs of an instance that never started: %v; want not exist", err)
	}
}

// TCP listeners stay on loopback: flows and metrics carry no TLS.
func TestListenConfigLoopbackOnly(t *testing.T) {
	p := testListenPaths(t)
	for _, addr := range []string{"0.0.0.0:4245", ":4245", "10.0.0.1:4245", "[::]:4245"} {
		a := addr
		if _, err := wantedListenConfig(p, Options{HubbleAddr: &a}); err == nil || !strings.Contains(err.Error(), "--hubble-listen") {
			t.Errorf("hubble on %s: err %v; want refused naming --hubble-listen", addr, err)
		}
		if _, err := wantedListenConfig(p, Options{MetricsAddr: &a}); err == nil || !strings.Contains(err.Error(), "--metrics-listen") {
			t.Errorf("metrics on %s: err %v; want refused naming --metrics-listen", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0", "localhost:0", "127.0.0.2:4245", ""} {
		a := addr
		if _, err := wantedListenConfig(p, Options{HubbleAddr: &a}); err != nil {
			t.Errorf("hubble on %q: %v", addr, err)
		}
	}
}

// An address in use fails with the address and the flag, and nothing is
// left bound (no unix socket either).
func TestBindListenersAddressInUse(t *testing.T) {
	p := testListenPaths(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	addr := busy.Addr().String()
	for _, c := range []struct {
		cfg  listenConfig
		flag string
	}{
		{listenConfig{HubbleTCP: addr, Metrics: "127.0.0.1:0", HubbleSocket: p.Hubble}, "--hubble-listen"},
		{listenConfig{HubbleTCP: "127.0.0.1:0", Metrics: addr, HubbleSocket: p.Hubble}, "--metrics-listen"},
	} {
		_, err := bindListeners(c.cfg)
		if err == nil || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), c.flag) {
			t.Errorf("bind %+v: %v; want an error naming %s and %s", c.cfg, err, addr, c.flag)
		}
		if _, err := os.Stat(p.Hubble); !os.IsNotExist(err) {
			t.Errorf("Hubble socket left after a failed bind: %v", err)
		}
	}
	lns, err := bindListeners(listenConfig{HubbleTCP: "127.0.0.1:0", HubbleSocket: p.Hubble})
	if err != nil {
		t.Fatal(err)
	}
	defer lns.close()
	fi, err := os.Stat(p.Hubble)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("Hubble socket: %v %v; want a 0600 socket", fi, err)
	}
	if _, err := bindListeners(listenConfig{HubbleSocket: p.Hubble}); err == nil {
		t.Error("a second server on a live Hubble socket: no error")
	}
}

// TestOpenAgentFailureReleases opens an agent whose health address is
// taken: it fails with the flag named (no panic), and what it had taken
// before failing (the instance lock, the Hubble and metrics listeners) is
// free again, so a second attempt on free addresses opens.
func TestOpenAgentFailureReleases(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	p := NewPaths(PathsOptions{Instance: "openfail", RunRoot: t.TempDir(), StateRoot: t.TempDir()})
	hubble, metrics := freeLoopbackAddr(t), freeLoopbackAddr(t)
	opts := Options{Paths: p, HubbleAddr: &hubble, MetricsAddr: &metrics,
		HealthAddr: taken.Addr().String(), Foreground: true,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if _, _, err := openAgent(opts); err == nil || !strings.Contains(err.Error(), "--health-addr") {
		t.Fatalf("open with the health address taken: %v, want an error naming --health-addr", err)
	}
	opts.HealthAddr = freeLoopbackAddr(t)
	a, release, err := openAgent(opts)
	if err != nil {
		t.Fatalf("open after a failed open: %v (lock or listeners not released)", err)
	}
	if a == nil {
		t.Fatal("nil agent")
	}
	release()
	if l, err := AcquireLock(p); err != nil {
		t.Errorf("lock after release: %v", err)
	} else {
		l.Release()
	}
}

func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
