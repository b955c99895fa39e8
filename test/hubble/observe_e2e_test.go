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
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/bulwark-net/bulwark/test/sandboxtest"
)

func TestMain(m *testing.M) { sandboxtest.Main(m) }

func newInstance(t *testing.T) *sandboxtest.Instance {
	t.Helper()
	return sandboxtest.New(t, sandboxtest.Options{
		Prefix: "obs", MetricsListen: "127.0.0.1:0", CombinedOutput: true, Timeout: 3 * time.Minute,
	})
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

func TestObservabilityOfRealTraffic(t *testing.T) {
	t.Parallel()
	in := newInstance(t)
	in.MustRun("up", "-f", sandboxtest.Seed(t, "sample-app.yaml"))
	backend := in.Pod("deploy/backend")
	if len(backend.IPs) == 0 {
		t.Fatal("no backend pod address")
	}
	backendIP := backend.IPs[0].String()

	// Allowed: no policy yet.
	if !in.TCP("deploy/frontend", backendIP, "8080") {
		t.Fatal("frontend -> backend:8080 refused before any policy")
	}
	allowed := jsonFlows(t, in.MustRun("observe", "--namespace", "demo", "--verdict", "FORWARDED", "--to-port", "8080", "-o", "json"))
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
	in.MustRun("apply", "-f", sandboxtest.Seed(t, "default-deny.yaml"))

	// A monitor started now sees the next drop live.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	mon := exec.CommandContext(ctx, sandboxtest.Binary(), in.Args("monitor", "--type", "drop")...)
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
		if in.TCP("deploy/frontend", backendIP, "8080") {
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
	dropped := jsonFlows(t, in.MustRun("observe", "--namespace", "demo", "--verdict", "DROPPED", "-o", "json"))
	found = false
	for _, f := range dropped {
		if f.GetDropReasonDesc() == flowpb.DropReason_POLICY_DENIED && sandboxtest.DeniedBy(f, "default-deny-all") &&
			strings.HasPrefix(f.GetSource().GetPodName(), "frontend-") {
			found = true
		}
	}
	if !found {
		t.Errorf("bulwark observe --verdict DROPPED shows no POLICY_DENIED flow from frontend denied by default-deny-all among %d", len(dropped))
	}
	compact := in.MustRun("observe", "--namespace", "demo", "--verdict", "DROPPED", "--print-policy-names")
	if !strings.Contains(compact, "[denied by demo/default-deny-all]") {
		t.Errorf("observe --print-policy-names does not name the policy:\n%s", compact)
	}

	t.Logf("observe:\n%s", compact)
	// Metrics: the drops are counted under Cilium's names as the seed
	// dashboard queries them.
	st := in.Status()
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
