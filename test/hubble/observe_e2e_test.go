// Package hubble checks Bulwark's observability end to end: a real sandbox
// (network namespaces, BPF programs) carries real allowed and denied
// traffic, and the flows and metrics it produces are read back through
// `bulwark observe`, `bulwark monitor`, the stock hubble CLI and /metrics.
//
// The tests need root; each uses its own instance and removes it with
// 'bulwark down' in t.Cleanup.
package hubble

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/bulwark-net/bulwark/internal/agent"
	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/sandbox"
)

var bulwarkBin string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		os.Exit(m.Run()) // every test skips
	}
	dir, err := os.MkdirTemp("", "bulwark-hubble-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bulwarkBin = filepath.Join(dir, "bulwark")
	build := exec.Command("go", "build", "-o", bulwarkBin, "./cmd/bulwark")
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build bulwark: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type instance struct {
	t         *testing.T
	name      string
	stateRoot string
}

func newInstance(t *testing.T) *instance {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veths and BPF programs")
	}
	b := make([]byte, 3)
	rand.Read(b)
	in := &instance{t: t, name: "obs-" + hex.EncodeToString(b), stateRoot: t.TempDir()}
	t.Cleanup(func() {
		if out, code := in.run("down"); code != 0 {
			t.Errorf("bulwark down: exit %d: %s", code, out)
		}
	})
	return in
}

// run runs the CLI for the instance; it returns combined output and exit
// status.
func (in *instance) run(args ...string) (string, int) {
	in.t.Helper()
	args = append(args, "--instance", in.name, "--state-root", in.stateRoot)
	if args[0] == "up" {
		args = append(args, "--hubble-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--wait", "2m")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bulwarkBin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), ee.ExitCode()
	} else if err != nil {
		in.t.Fatalf("run bulwark %v: %v", args, err)
	}
	return out.String(), 0
}

func (in *instance) mustRun(args ...string) string {
	in.t.Helper()
	out, code := in.run(args...)
	if code != 0 {
		in.t.Fatalf("bulwark %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

func (in *instance) status() agentapi.Status {
	in.t.Helper()
	p := agent.NewPaths(agent.PathsOptions{Instance: in.name, StateRoot: in.stateRoot})
	st, err := agentapi.NewClient(p.Socket).Status(context.Background())
	if err != nil {
		in.t.Fatalf("status: %v", err)
	}
	return st
}

// connect opens a TCP connection from a demo pod; it reports success.
func (in *instance) connect(from, host, port string) bool {
	in.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	code, err := sandbox.Exec(ctx, sandbox.ExecOptions{
		Instance: in.name, Namespace: "demo", Target: from, Command: []string{"nc", "-w", "2", "-z", host, port},
		Stdin: strings.NewReader(""), Stdout: &out, Stderr: &out,
	})
	if err != nil {
		in.t.Fatalf("exec %s: %v", from, err)
	}
	return code == 0
}

func jsonFlows(t *testing.T, out string) []*flowpb.Flow {
	t.Helper()
	var flows []*flowpb.Flow
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var resp observerpb.GetFlowsResponse
		if err := protojson.Unmarshal(sc.Bytes(), &resp); err != nil {
			t.Fatalf("observe -o json line %q: %v", sc.Text(), err)
		}
		if f := resp.GetFlow(); f != nil {
			flows = append(flows, f)
		}
	}
	return flows
}

func deniedBy(f *flowpb.Flow, policy string) bool {
	for _, p := range append(f.GetIngressDeniedBy(), f.GetEgressDeniedBy()...) {
		if p.GetName() == policy {
			return true
		}
	}
	return false
}

func TestObservabilityOfRealTraffic(t *testing.T) {
	t.Parallel()
	in := newInstance(t)
	in.mustRun("up", "-f", filepath.Join("..", "..", "testdata", "seed", "sample-app.yaml"))
	backendIP := ""
	if st, err := sandbox.ReadState("", in.name); err == nil {
		if p, err := st.FindPod("demo", "deploy/backend"); err == nil && len(p.IPs) > 0 {
			backendIP = p.IPs[0].String()
		}
	}
	if backendIP == "" {
		t.Fatal("no backend pod address")
	}

	// Allowed: no policy yet.
	if !in.connect("deploy/frontend", backendIP, "8080") {
		t.Fatal("frontend -> backend:8080 refused before any policy")
	}
	allowed := jsonFlows(t, in.mustRun("observe", "--namespace", "demo", "--verdict", "FORWARDED", "--to-port", "8080", "-o", "json"))
	found := false
	for _, f := range allowed {
		if strings.HasPrefix(f.GetSource().GetPodName(), "frontend-") && f.GetIP().GetDestination() == backendIP {
			found = true
		}
	}
	if !found {
		t.Errorf("bulwark observe shows no FORWARDED frontend -> backend:8080 flow among %d", len(allowed))
	}

	// Denied: default deny in both directions.
	in.mustRun("apply", "-f", filepath.Join("..", "..", "testdata", "seed", "default-deny.yaml"))

	// A monitor started now sees the next drop live.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	mon := exec.CommandContext(ctx, bulwarkBin, "monitor", "--type", "drop", "--instance", in.name, "--state-root", in.stateRoot)
	monOut, err := mon.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := mon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = mon.Wait()
	})
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(monOut)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var monitorLine string
	for attempt := 0; attempt < 10 && monitorLine == ""; attempt++ {
		if in.connect("deploy/frontend", backendIP, "8080") {
			t.Fatal("frontend -> backend:8080 connects under default deny")
		}
	drain:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatal("bulwark monitor ended")
				}
				if strings.Contains(l, "xx drop (Policy denied)") && strings.Contains(l, backendIP+":8080") {
					monitorLine = l
					break drain
				}
			case <-time.After(time.Second):
				break drain
			}
		}
	}
	if monitorLine == "" {
		t.Error("bulwark monitor --type drop printed no policy drop of frontend -> backend:8080")
	}

	t.Logf("monitor: %s", monitorLine)
	dropped := jsonFlows(t, in.mustRun("observe", "--namespace", "demo", "--verdict", "DROPPED", "-o", "json"))
	found = false
	for _, f := range dropped {
		if f.GetDropReasonDesc() == flowpb.DropReason_POLICY_DENIED && deniedBy(f, "default-deny-all") &&
			strings.HasPrefix(f.GetSource().GetPodName(), "frontend-") {
			found = true
		}
	}
	if !found {
		t.Errorf("bulwark observe --verdict DROPPED shows no POLICY_DENIED flow from frontend denied by default-deny-all among %d", len(dropped))
	}
	compact := in.mustRun("observe", "--namespace", "demo", "--verdict", "DROPPED", "--print-policy-names")
	if !strings.Contains(compact, "[denied by demo/default-deny-all]") {
		t.Errorf("observe --print-policy-names does not name the policy:\n%s", compact)
	}

	t.Logf("observe:\n%s", compact)
	// Metrics: the drops are counted under Cilium's names as the seed
	// dashboard queries them.
	st := in.status()
	if st.MetricsAddr == "" {
		t.Fatal("no metrics address in status")
	}
	resp, err := http.Get("http://" + st.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `cilium_drop_count_total{direction="EGRESS",reason="Policy denied"}`) {
		t.Errorf("/metrics has no cilium_drop_count_total for egress policy drops:\n%s", grepLines(string(body), "drop_count"))
	}
	if !strings.Contains(string(body), `bulwark_drops_by_policy_total{direction="egress",namespace="demo",policy="default-deny-all"}`) {
		t.Errorf("/metrics has no drops by policy default-deny-all:\n%s", grepLines(string(body), "drops_by"))
	}

	// The stock hubble CLI reads the same flows.
	if bin := os.Getenv("HUBBLE_BIN"); bin != "" {
		out, err := exec.Command(bin, "observe", "--server", "unix://"+st.HubbleSock, "--namespace", "demo",
			"--verdict", "DROPPED", "-o", "json").Output()
		if err != nil {
			t.Fatalf("hubble observe: %v", err)
		}
		if hubbleDrops := jsonFlows(t, string(out)); len(hubbleDrops) == 0 {
			t.Error("hubble observe --verdict DROPPED shows nothing")
		}
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
