package observer

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/encoding/protojson"
)

// hubbleVersion is the Cilium release whose hubble CLI must read our flows:
// the same module version the API packages come from.
const hubbleVersion = "v1.20.2"

// stockHubble builds the unmodified hubble CLI in a throwaway module outside
// the repository (from the module cache when it is warm). HUBBLE_BIN may
// point at an already built binary of that version.
func stockHubble(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("HUBBLE_BIN"); bin != "" {
		return bin
	}
	if testing.Short() {
		t.Skip("building the stock hubble CLI takes minutes: skipped in -short mode (set HUBBLE_BIN to use a built one)")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	run := func(args ...string) {
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("mod", "init", "hubblebuild.invalid/x")
	run("get", "github.com/cilium/cilium/hubble@"+hubbleVersion)
	bin := filepath.Join(dir, "hubble")
	run("build", "-o", bin, "github.com/cilium/cilium/hubble")
	return bin
}

func runHubble(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("hubble %s: %v\nstderr: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// parseJSONFlows reads `hubble observe -o json` output: one GetFlowsResponse
// per line.
func parseJSONFlows(t *testing.T, out string) []*flowpb.Flow {
	t.Helper()
	var flows []*flowpb.Flow
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var resp observerpb.GetFlowsResponse
		if err := protojson.Unmarshal([]byte(line), &resp); err != nil {
			t.Fatalf("hubble output line %q: %v", line, err)
		}
		flows = append(flows, resp.GetFlow())
	}
	return flows
}

func TestStockHubbleCLI(t *testing.T) {
	bin := stockHubble(t)
	o := newTestObserver(t, 0)
	feedDemo(o)
	_, _, sock := startServer(t, o)
	server := "unix://" + sock

	all := parseJSONFlows(t, runHubble(t, bin, "observe", "--server", server, "-o", "json", "--namespace", "demo"))
	if got := ports(all); !slices.Equal(got, []uint32{8080, 5432, 443, 53}) {
		t.Fatalf("hubble observe --namespace demo: ports %v", got)
	}
	f := all[0]
	if f.GetSource().GetPodName() != "frontend-7d4b9c" || f.GetDestination().GetNamespace() != "demo" ||
		f.GetVerdict() != flowpb.Verdict_FORWARDED || f.GetIngressAllowedBy()[0].GetName() != "frontend-to-backend" ||
		f.GetL4().GetTCP().GetFlags().GetSYN() != true || f.GetNodeName() != "node-1" {
		t.Errorf("first flow as hubble printed it: %v", f)
	}

	dropped := parseJSONFlows(t, runHubble(t, bin, "observe", "--server", server, "-o", "json", "--verdict", "DROPPED"))
	var reasons []flowpb.DropReason
	for _, f := range dropped {
		reasons = append(reasons, f.GetDropReasonDesc())
	}
	if !slices.Equal(reasons, []flowpb.DropReason{flowpb.DropReason_POLICY_DENIED, flowpb.DropReason_POLICY_DENY}) {
		t.Errorf("hubble observe --verdict DROPPED: reasons %v", reasons)
	}

	labelled := parseJSONFlows(t, runHubble(t, bin, "observe", "--server", server, "-o", "json",
		"--namespace", "demo", "--from-label", "app=frontend", "--to-label", "app=backend"))
	if got := ports(labelled); !slices.Equal(got, []uint32{8080, 53}) {
		t.Errorf("hubble observe --from-label app=frontend --to-label app=backend: ports %v", got)
	}

	compact := runHubble(t, bin, "observe", "--server", server, "--type", "drop", "--print-policy-names")
	for _, want := range []string{"demo/frontend-7d4b9c", "demo/database-0", "DROPPED", "Policy denied"} {
		if !strings.Contains(compact, want) {
			t.Errorf("hubble observe --type drop (compact) lacks %q:\n%s", want, compact)
		}
	}
	if strings.Contains(compact, "8080") {
		t.Errorf("hubble observe --type drop shows a forwarded flow:\n%s", compact)
	}

	verdicts := runHubble(t, bin, "observe", "--server", server, "--type", "policy-verdict", "--print-policy-names")
	if !strings.Contains(verdicts, "policy-verdict:L3-L4 INGRESS ALLOWED BY frontend-to-backend (CiliumNetworkPolicy)") || strings.Contains(verdicts, "DROPPED") {
		t.Errorf("hubble observe --type policy-verdict --print-policy-names:\n%s", verdicts)
	}

	// --follow: flows pushed after hubble connected arrive live.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	follow := exec.CommandContext(ctx, bin, "observe", "--server", server, "--follow", "-o", "json", "--to-port", "6379")
	follow.Env = append(os.Environ(), "HOME="+t.TempDir())
	stdout, err := follow.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var live string
	for live == "" {
		ev := allowedSYN(time.Minute)
		ev.Time, ev.DstPort = time.Now(), 6379
		o.Handle(&ev)
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("hubble observe --follow ended: %v", follow.Wait())
			}
			live = l
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("hubble observe --follow printed nothing")
		}
	}
	cancel()
	_ = follow.Wait()
	if got := ports(parseJSONFlows(t, live)); !slices.Equal(got, []uint32{6379}) {
		t.Errorf("hubble observe --follow: %q", live)
	}

	status := runHubble(t, bin, "status", "--server", server)
	if !strings.Contains(status, "Healthcheck (via unix://") || !strings.Contains(status, "/4,096 (") || !strings.Contains(status, "Connected Nodes: 1/1") {
		t.Errorf("hubble status:\n%s", status)
	}
}
