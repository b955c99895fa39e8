package relay

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/encoding/protojson"
)

// TestStockHubbleCLI: the stock hubble CLI reads every node through the
// relay. It needs a built hubble (HUBBLE_BIN; internal/observer's test
// shows how to build the one of our API version).
func TestStockHubbleCLI(t *testing.T) {
	bin := os.Getenv("HUBBLE_BIN")
	if bin == "" {
		t.Skip("HUBBLE_BIN is not set: no stock hubble CLI to run")
	}
	a, b := twoNodes(t)
	r := newRelay(t, Options{}, peerOf(a), peerOf(b), downPeer(t))
	sock := filepath.Join(t.TempDir(), "relay.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	hubble := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, append(args, "--server", "unix://"+sock)...)
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("hubble %s: %v\nstderr: %s", strings.Join(args, " "), err, stderr.String())
		}
		return stdout.String()
	}

	var got []uint32
	for line := range strings.Lines(hubble("observe", "--last", "4", "-o", "jsonpb")) {
		var resp observerpb.GetFlowsResponse
		if err := protojson.Unmarshal([]byte(line), &resp); err != nil {
			t.Fatalf("hubble observe line %q: %v", line, err)
		}
		if f := resp.GetFlow(); f != nil {
			got = append(got, f.GetL4().GetTCP().GetDestinationPort())
		}
	}
	if want := []uint32{1003, 1004, 1005, 1006}; !slices.Equal(got, want) {
		t.Errorf("hubble observe --last 4: ports %v, want %v", got, want)
	}
	if out := hubble("status"); !strings.Contains(out, "Connected Nodes: 2/3") || !strings.Contains(out, "node-c") {
		t.Errorf("hubble status:\n%s", out)
	}
	out := hubble("list", "nodes")
	for _, want := range []string{"node-a", "node-b", "node-c"} {
		if !strings.Contains(out, want) {
			t.Errorf("hubble list nodes lacks %s:\n%s", want, out)
		}
	}
	if out := hubble("list", "namespaces"); !strings.Contains(out, "alpha") || !strings.Contains(out, "beta") {
		t.Errorf("hubble list namespaces:\n%s", out)
	}
}
