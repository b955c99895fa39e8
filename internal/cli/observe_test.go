package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/observer"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/proxy"
)

func TestObserveRequestFromFlags(t *testing.T) {
	now := time.Date(2026, 11, 26, 5, 0, 0, 0, time.UTC)
	req, err := (&observeFlags{namespaces: []string{"demo"}, verdicts: []string{"dropped"}}).request(now)
	if err != nil {
		t.Fatal(err)
	}
	if len(req.Whitelist) != 2 || req.Whitelist[0].SourcePod[0] != "demo/" || req.Whitelist[1].DestinationPod[0] != "demo/" ||
		req.Whitelist[0].Verdict[0] != flowpb.Verdict_DROPPED || req.Whitelist[1].Verdict[0] != flowpb.Verdict_DROPPED ||
		req.Number != defaultObserveLast || req.Follow {
		t.Errorf("--namespace demo --verdict dropped: %v", req)
	}
	req, err = (&observeFlags{namespaces: []string{"demo"}, fromLabels: []string{"app=frontend"}, toLabels: []string{"app=backend"}, follow: true}).request(now)
	if err != nil {
		t.Fatal(err)
	}
	for _, ff := range req.Whitelist {
		if ff.SourceLabel[0] != "app=frontend" || ff.DestinationLabel[0] != "app=backend" {
			t.Errorf("labels not on every filter: %v", ff)
		}
	}
	if req.Number != 0 || !req.Follow {
		t.Errorf("--follow without --last must only follow: %v", req)
	}
	req, err = (&observeFlags{namespaces: []string{"demo"}, fromPods: []string{"frontend"}, last: 5, since: "5m", until: "2026-11-26T04:58:00Z"}).request(now)
	if err != nil {
		t.Fatal(err)
	}
	if len(req.Whitelist) != 1 || req.Whitelist[0].SourcePod[0] != "demo/frontend" || req.Number != 5 ||
		!req.Since.AsTime().Equal(now.Add(-5*time.Minute)) || !req.Until.AsTime().Equal(now.Add(-2*time.Minute)) {
		t.Errorf("--from-pod frontend --last 5 --since 5m: %v", req)
	}
	req, err = (&observeFlags{types: []string{"trace:to-endpoint", "drop"}, protocols: []string{"TCP"}, ports: []string{"80"}}).request(now)
	if err != nil {
		t.Fatal(err)
	}
	et := req.Whitelist[0].EventType
	if len(req.Whitelist) != 2 || req.Whitelist[0].SourcePort[0] != "80" || req.Whitelist[1].DestinationPort[0] != "80" ||
		len(req.Whitelist[1].SourcePort) != 0 || et[0].Type != 4 || !et[0].MatchSubType || et[1].Type != 1 {
		t.Errorf("--type trace:to-endpoint,drop --port 80: %v", req)
	}
}

func TestObserveRejectsBadFlags(t *testing.T) {
	now := time.Now()
	tests := []struct {
		flags observeFlags
		want  string
	}{
		{observeFlags{last: 1, first: 1}, "--first and --last"},
		{observeFlags{first: 1, follow: true}, "--first cannot be combined with --follow"},
		{observeFlags{all: true, last: 3}, "--all"},
		{observeFlags{pods: []string{"a"}, fromPods: []string{"b"}}, "--pod cannot be combined with --from-pod"},
		{observeFlags{labels: []string{"a=b"}, toLabels: []string{"c=d"}}, "--label cannot be combined"},
		{observeFlags{namespaces: []string{"a"}, fromNamespaces: []string{"b"}}, "--namespace cannot be combined"},
		{observeFlags{verdicts: []string{"DENIED"}}, `--verdict "DENIED"`},
		{observeFlags{protocols: []string{"quic"}}, `--protocol "quic"`},
		{observeFlags{types: []string{"l8"}}, `--type "l8"`},
		{observeFlags{ports: []string{"http"}}, `--port "http"`},
		{observeFlags{since: "yesterday"}, `--since "yesterday"`},
		{observeFlags{since: "1m", until: "5m"}, "before --since"},
		{observeFlags{trafficDirection: "sideways"}, "--traffic-direction"},
		{observeFlags{namespaces: []string{"a", "b"}, fromPods: []string{"x"}}, "several namespaces"},
		{observeFlags{httpStatus: []string{"4xx"}}, "http_status_code"},
		{observeFlags{httpPaths: []string{"/api/("}}, "http_path"},
	}
	for _, tt := range tests {
		_, err := tt.flags.request(now)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("flags %+v: error %v, want one mentioning %s", tt.flags, err, tt.want)
		}
	}
}

// cliResolver knows two pods of namespace demo.
type cliResolver struct{}

var (
	cliClientIP = netip.MustParseAddr("10.201.0.1")
	cliServerIP = netip.MustParseAddr("10.201.0.2")
)

func (cliResolver) EndpointByID(id uint32) (observer.EndpointInfo, bool) {
	switch id {
	case 11:
		return observer.EndpointInfo{ID: 11, Identity: 500, Namespace: "demo", PodName: "client", Labels: observer.PodLabels("demo", map[string]string{"app": "client"})}, true
	case 12:
		return observer.EndpointInfo{ID: 12, Identity: 501, Namespace: "demo", PodName: "server", Labels: observer.PodLabels("demo", map[string]string{"app": "server"})}, true
	}
	return observer.EndpointInfo{}, false
}

func (r cliResolver) EndpointByIP(ip netip.Addr) (observer.EndpointInfo, bool) {
	switch ip {
	case cliClientIP:
		return r.EndpointByID(11)
	case cliServerIP:
		return r.EndpointByID(12)
	}
	return observer.EndpointInfo{}, false
}

func (cliResolver) IdentityLabels(identity.NumericIdentity) []string { return nil }
func (cliResolver) RulePolicies(id uint32) []resolved.PolicyRef {
	return []resolved.PolicyRef{{Kind: "CiliumNetworkPolicy", Namespace: "demo", Name: "allow-client"}}
}
func (cliResolver) SelectingPolicies(uint32, resolved.Direction) []resolved.PolicyRef {
	return []resolved.PolicyRef{{Kind: "NetworkPolicy", Namespace: "demo", Name: "default-deny"}}
}

func cliEvent(port uint16, verdict event.Verdict) *event.Event {
	ev := &event.Event{
		Time: time.Now(), Type: event.TypePolicyVerdict, EndpointID: 12, Direction: resolved.Ingress, Verdict: verdict,
		SrcIdentity: 500, DstIdentity: 501, Src: cliClientIP, Dst: cliServerIP, SrcPort: 40000, DstPort: port,
		Proto: resolved.ProtoTCP, TCPFlags: 0x02, Bytes: 60, RuleID: 1,
	}
	if verdict == event.Dropped {
		ev.Type, ev.Reason, ev.RuleID = event.TypeDrop, event.ReasonPolicyDenied, 0
	}
	return ev
}

// startCLIServer runs an observer with a Hubble server on a temp socket.
func startCLIServer(t *testing.T) (*observer.Observer, string) {
	t.Helper()
	o, err := observer.New(observer.Options{NodeName: "cli-node", Resolver: cliResolver{}})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "hubble.sock")
	s, err := observer.NewServer(observer.ServerOptions{Observer: o, UnixSocket: sock})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return o, sock
}

func runCLI(t *testing.T, ctx context.Context, args ...string) (string, error) {
	t.Helper()
	root := NewRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

func TestObserveCommandAgainstServer(t *testing.T) {
	o, sock := startCLIServer(t)
	o.Handle(cliEvent(80, event.Forwarded))
	o.Handle(cliEvent(81, event.Dropped))
	ctx := context.Background()

	out, err := runCLI(t, ctx, "observe", "--server", "unix://"+sock, "--namespace", "demo", "--print-policy-names")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 ||
		!strings.Contains(lines[0], "demo/client:40000 (ID:500) -> demo/server:80 (ID:501) policy-verdict:none INGRESS ALLOWED FORWARDED (TCP Flags: SYN) [allowed by demo/allow-client]") ||
		!strings.Contains(lines[1], "demo/server:81 (ID:501) Policy denied DROPPED (TCP Flags: SYN) [denied by demo/default-deny]") {
		t.Errorf("compact output:\n%s", out)
	}

	out, err = runCLI(t, ctx, "observe", "--server", sock, "--verdict", "DROPPED", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var resp observerpb.GetFlowsResponse
	if err := protojson.Unmarshal([]byte(strings.TrimSpace(out)), &resp); err != nil {
		t.Fatalf("json output %q: %v", out, err)
	}
	if resp.GetFlow().GetDropReasonDesc() != flowpb.DropReason_POLICY_DENIED || resp.GetFlow().GetL4().GetTCP().GetDestinationPort() != 81 {
		t.Errorf("json flow %v", resp.GetFlow())
	}

	out, err = runCLI(t, ctx, "observe", "--server", sock, "-o", "table", "--to-port", "80")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "TIMESTAMP") || strings.Count(out, "\n") != 2 || !strings.Contains(out, "FORWARDED") {
		t.Errorf("table output:\n%s", out)
	}
	out, err = runCLI(t, ctx, "observe", "--server", sock, "-o", "dict", "--last", "2")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(out, "------------") != 1 || !strings.Contains(out, "VERDICT: DROPPED") {
		t.Errorf("dict output:\n%s", out)
	}
	if _, err := runCLI(t, ctx, "observe", "--server", sock, "-o", "yaml"); err == nil || !strings.Contains(err.Error(), "invalid output format") {
		t.Errorf("-o yaml: %v", err)
	}
}

func TestMonitorStreamsLiveEvents(t *testing.T) {
	o, sock := startCLIServer(t)
	o.Handle(cliEvent(79, event.Dropped)) // before the monitor starts: not shown
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out bytes.Buffer
	done := make(chan error, 1)
	root := NewRootCmd()
	root.SetOut(&syncWriter{w: &out, onLine: func(n int) {
		if n == 1 {
			cancel()
		}
	}})
	root.SetErr(&bytes.Buffer{})
	root.SetArgs([]string{"monitor", "--server", "unix://" + sock, "--type", "drop", "--to", "12", "-j"})
	go func() { done <- root.ExecuteContext(ctx) }()
	// Push until the monitor, once connected, prints the first drop. The
	// forwarded event is filtered out by --type drop.
	for {
		o.Handle(cliEvent(80, event.Forwarded))
		o.Handle(cliEvent(81, event.Dropped))
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			var rec struct {
				Type     string `json:"type"`
				Reason   string `json:"reason"`
				Endpoint uint32 `json:"endpoint"`
				DstPort  uint32 `json:"dstPort"`
			}
			first := strings.SplitN(out.String(), "\n", 2)[0]
			if err := json.Unmarshal([]byte(first), &rec); err != nil {
				t.Fatalf("monitor -j line %q: %v", first, err)
			}
			if rec.Type != "drop" || rec.Reason != "Policy denied" || rec.Endpoint != 12 || rec.DstPort != 81 {
				t.Errorf("monitor event %+v", rec)
			}
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// syncWriter calls onLine with the number of complete lines written.
type syncWriter struct {
	w      *bytes.Buffer
	lines  int
	onLine func(int)
}

func (s *syncWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	s.lines += bytes.Count(p, []byte("\n"))
	if s.lines > 0 {
		s.onLine(s.lines)
	}
	return n, err
}

// L7 flows from proxy Records, filtered with hubble's L7 flags.
func TestObserveL7AgainstServer(t *testing.T) {
	o, sock := startCLIServer(t)
	rec := func(typ proxy.RecordType, v proxy.Verdict, method, path string, code int) proxy.Record {
		return proxy.Record{Time: time.Now(), Type: typ, Verdict: v, Direction: resolved.Ingress, EndpointID: 12,
			Flow:     proxy.Flow{Src: netip.AddrPortFrom(cliClientIP, 40000), Dst: netip.AddrPortFrom(cliServerIP, 80), Protocol: resolved.ProtoTCP, SrcIdentity: 500, DstIdentity: 501},
			Policies: []string{"demo/l7-http-policy"},
			HTTP:     &proxy.HTTP{Method: method, URL: "http://server" + path, Protocol: "HTTP/1.1", Code: code}}
	}
	o.HandleL7(rec(proxy.Request, proxy.Forwarded, "GET", "/health", 0))
	o.HandleL7(rec(proxy.Response, proxy.Forwarded, "GET", "/health", 200))
	o.HandleL7(rec(proxy.Request, proxy.Dropped, "DELETE", "/api/v1/users", 0))
	o.HandleL7(rec(proxy.Response, proxy.Dropped, "DELETE", "/api/v1/users", 403))
	o.Handle(cliEvent(80, event.Forwarded))
	ctx := context.Background()

	out, err := runCLI(t, ctx, "observe", "--server", sock, "--protocol", "http", "--http-status", "4+", "--print-policy-names")
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 1 ||
		!strings.Contains(lines[0], "demo/client:40000 (ID:500) <- demo/server:80 (ID:501) http-response DROPPED (HTTP/1.1 403 0ms (DELETE http://server/api/v1/users)) [denied by demo/l7-http-policy]") {
		t.Errorf("--http-status 4+:\n%s", out)
	}
	out, err = runCLI(t, ctx, "observe", "--server", sock, "--http-method", "get", "--http-path", "^/health$")
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.Contains(lines[0], "http-request FORWARDED (HTTP/1.1 GET http://server/health)") {
		t.Errorf("--http-method get --http-path:\n%s", out)
	}
	out, err = runCLI(t, ctx, "observe", "--server", sock, "--type", "l7")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(strings.TrimSpace(out), "\n") + 1; n != 4 {
		t.Errorf("--type l7: %d flows, want 4:\n%s", n, out)
	}
}
