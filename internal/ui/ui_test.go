package ui

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/observer"
	"github.com/bulwark-net/bulwark/internal/offline/check"
)

// stateSource serves pods as listed and traces with the offline checker
// over the seed manifests: the engine the agent uses, on a state from files.
type stateSource struct {
	pods []agentapi.Pod
	st   *check.State
}

func (s stateSource) Pods(context.Context) ([]agentapi.Pod, error) { return s.pods, nil }

func (s stateSource) Trace(_ context.Context, q TraceQuery) (Trace, error) {
	return TraceState(s.st, q)
}

func seedSource(t *testing.T) stateSource {
	t.Helper()
	seed := func(n string) string { return filepath.Join("..", "..", "testdata", "seed", n) }
	st, err := check.Load(seed("sample-app.yaml"), seed("default-deny.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return stateSource{st: st, pods: []agentapi.Pod{
		{Namespace: "demo", Name: "frontend-0", Owner: "Deployment/frontend"},
		{Namespace: "demo", Name: "backend-0", Owner: "Deployment/backend"},
	}}
}

func newTestServer(t *testing.T, ring *observer.Ring) *httptest.Server {
	t.Helper()
	h, err := NewHandler(Options{Instance: "test", Source: seedSource(t), Ring: ring, FollowBuffer: 16})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h) // listens on 127.0.0.1
	t.Cleanup(srv.Close)
	return srv
}

func httpFlow(verdict flowpb.Verdict) *flowpb.Flow {
	return &flowpb.Flow{
		Time: timestamppb.New(time.Unix(1700000000, 0)), Uuid: "u-" + verdict.String(), Verdict: verdict, Type: flowpb.FlowType_L7,
		Source:      &flowpb.Endpoint{Namespace: "demo", PodName: "frontend-0", Identity: 259, Labels: []string{"k8s:app=frontend"}},
		Destination: &flowpb.Endpoint{Namespace: "demo", PodName: "backend-0", Identity: 257},
		IP:          &flowpb.IP{Source: "10.244.1.2", Destination: "10.244.1.3"},
		L4:          &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: 40000, DestinationPort: 8080}}},
		L7: &flowpb.Layer7{Type: flowpb.L7FlowType_REQUEST, Record: &flowpb.Layer7_Http{Http: &flowpb.HTTP{
			Method: "GET", Url: "http://backend:8080/api", Protocol: "HTTP/1.1"}}},
		IngressDeniedBy: []*flowpb.Policy{{Kind: "NetworkPolicy", Namespace: "demo", Name: "default-deny-all"}},
	}
}

func TestPageServedOnlyToLoopbackNames(t *testing.T) {
	srv := newTestServer(t, observer.NewRing(8))
	for host, want := range map[string]int{
		"": http.StatusOK, "localhost": http.StatusOK, "[::1]:9": http.StatusOK,
		"evil.example": http.StatusMisdirectedRequest, "10.0.0.1:80": http.StatusMisdirectedRequest,
	} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/", nil)
		if host != "" {
			req.Host = host
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("Host %q: status %d, want %d", host, resp.StatusCode, want)
		}
		if want == http.StatusOK && !strings.Contains(string(body), `id="map"`) {
			t.Errorf("Host %q: the page is not the service map:\n%.300s", host, body)
		}
	}
	if _, err := Listen("0.0.0.0:0", http.NotFoundHandler()); err == nil {
		t.Error("Listen accepted a non-loopback address")
	}
}

func TestEmbeddedAssetsAreThePagesScripts(t *testing.T) {
	srv := newTestServer(t, observer.NewRing(8))
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, asset := range []string{"assets/index.js", "assets/index.css"} {
		if !strings.Contains(string(page), asset) {
			t.Errorf("index.html does not load %s", asset)
		}
		resp, err := http.Get(srv.URL + "/" + asset)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || len(b) == 0 {
			t.Errorf("%s: status %d, %d bytes", asset, resp.StatusCode, len(b))
		}
	}
}

// sseReader reads server-sent events.
type sseReader struct{ r *bufio.Reader }

func (s sseReader) next(t *testing.T) (event, data string) {
	t.Helper()
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			t.Fatalf("event stream: %v", err)
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data = strings.TrimPrefix(line, "data: ")
		case line == "" && event != "":
			return event, data
		}
	}
}

func TestEventsStreamBacklogThenLiveFlows(t *testing.T) {
	ring := observer.NewRing(8)
	ring.Push(httpFlow(flowpb.Verdict_FORWARDED))
	srv := newTestServer(t, ring)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/api/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	sse := sseReader{bufio.NewReader(resp.Body)}
	if ev, _ := sse.next(t); ev != "reset" {
		t.Fatalf("first event %q, want reset", ev)
	}
	ev, data := sse.next(t)
	var f Flow
	if err := json.Unmarshal([]byte(data), &f); ev != "flow" || err != nil {
		t.Fatalf("backlog event %q %q: %v", ev, data, err)
	}
	if f.Verdict != "FORWARDED" || f.Src.Workload != "frontend" || f.Dst.Workload != "backend" || f.Port != 8080 || f.Protocol != "TCP" {
		t.Errorf("backlog flow %+v", f)
	}
	if f.L7 == nil || f.L7.HTTP == nil || f.L7.HTTP.Method != "GET" || f.L7.HTTP.URL != "http://backend:8080/api" {
		t.Errorf("L7 detail lost: %+v", f.L7)
	}
	// Live: a flow pushed now arrives on the open stream.
	ring.Push(httpFlow(flowpb.Verdict_DROPPED))
	ev, data = sse.next(t)
	if err := json.Unmarshal([]byte(data), &f); ev != "flow" || err != nil {
		t.Fatalf("live event %q %q: %v", ev, data, err)
	}
	if f.Verdict != "DROPPED" || len(f.Policies) != 1 || f.Policies[0] != "NetworkPolicy demo/default-deny-all" {
		t.Errorf("live dropped flow: verdict %s policies %v", f.Verdict, f.Policies)
	}
}

func TestTraceExplainsWithTheEngine(t *testing.T) {
	srv := newTestServer(t, observer.NewRing(8))
	get := func(q string) (int, map[string]any) {
		resp, err := http.Get(srv.URL + "/api/trace?" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body
	}
	code, body := get("src=demo/frontend-0&dst=demo/backend-0&port=8080&proto=TCP")
	if code != http.StatusOK || body["verdict"] != "denied" || !strings.Contains(body["text"].(string), "default deny set by NetworkPolicy demo/default-deny-all") {
		t.Errorf("trace: %d %v", code, body)
	}
	for _, q := range []string{"src=demo/frontend-0&dst=demo/backend-0", "src=demo/nope-0&dst=demo/backend-0&port=80", "dst=demo/backend-0&port=80", "src=demo/frontend-0&dst=demo/backend-0&port=80&proto=GRE"} {
		if code, body := get(q); code != http.StatusBadRequest || body["error"] == "" {
			t.Errorf("trace %s: %d %v, want 400 with an error", q, code, body)
		}
	}
}
