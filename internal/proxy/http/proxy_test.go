package httpproxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/offline/check"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/proxy"
)

// seedPolicy compiles seed documents (file names under testdata/seed, or
// inline YAML) with the real engine and returns the
// proxy Policy of the flow src -> dst:port (ingress rules of dst).
func seedPolicy(t *testing.T, src, dst string, port int, files ...string) *proxy.Policy {
	t.Helper()
	var objs []*manifest.Object
	for _, f := range files {
		path, data := "inline.yaml", []byte(f)
		if strings.HasSuffix(f, ".yaml") {
			path = filepath.Join("..", "..", "..", "testdata", "seed", f)
			var err error
			if data, err = os.ReadFile(path); err != nil {
				t.Fatal(err)
			}
		}
		o, errs := manifest.Decode(path, data)
		if len(errs) > 0 {
			t.Fatalf("decode %s: %v", f, errs)
		}
		objs = append(objs, o...)
	}
	st, err := check.FromSet(manifest.NewSet(objs...))
	if err != nil {
		t.Fatal(err)
	}
	res, err := st.Check(check.Flow{Src: src, Dst: dst, Port: port, Protocol: "TCP"})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Proxy || res.IngressDecision == nil || res.IngressDecision.L7 == nil {
		t.Fatalf("%s -> %s:%d is not redirected to the proxy: %+v", src, dst, port, res)
	}
	return &proxy.Policy{Stages: []proxy.Stage{{EndpointID: 1, Direction: resolved.Ingress, Rules: res.IngressDecision.L7, Policies: res.Policies}}}
}

// The seed's l7-http-policy.yaml, compiled by the engine, enforced on
// curl's HTTP/1.1 requests.
func TestSeedHTTPPolicy(t *testing.T) {
	pol := seedPolicy(t, "demo/frontend-0", "demo/backend-0", 8080, "sample-app.yaml", "l7-http-policy.yaml")
	e := newEnv(t, envOptions{policy: pol})
	for _, tc := range []struct{ method, path, want string }{
		{"GET", "/health", "200"},
		{"GET", "/metrics", "200"},
		{"GET", "/api/v1/users", "200"},
		{"POST", "/api/v1/users", "200"},
		{"OPTIONS", "/anything", "200"},
		{"DELETE", "/api/v1/users", "403"},
		{"GET", "/admin/secret", "403"},
		{"GET", "/api/v2/users", "403"},
		{"GET", "/healthz", "403"},    // whole-value match, not a prefix
		{"GET", "/health?x=1", "403"}, // the query is part of the matched path, as Envoy's :path
	} {
		code, body := e.curl("-X", tc.method, e.url(tc.path))
		if code != tc.want {
			t.Errorf("%s %s: %s, want %s (%s)", tc.method, tc.path, code, tc.want, body)
		}
		if code == "403" && body != "Access denied" {
			t.Errorf("%s %s: body %q, want %q", tc.method, tc.path, body, "Access denied")
		}
	}
	if e.backendSaw("/admin") || e.backendSaw("/api/v2") {
		t.Errorf("a denied request reached the backend: %+v", e.backend.requests())
	}
	// Records name the seed policy, with L7 fields.
	var denied, forwarded bool
	for _, r := range e.rec.all() {
		if r.Type != proxy.Request || r.HTTP == nil {
			continue
		}
		if r.Verdict == proxy.Dropped && r.HTTP.Method == "DELETE" {
			denied = len(r.Policies) == 1 && r.Policies[0] == "demo/l7-http-policy" && strings.HasSuffix(r.HTTP.URL, "/api/v1/users")
		}
		if r.Verdict == proxy.Forwarded && r.HTTP.URL == "http://"+e.addr+"/health" {
			forwarded = r.HTTP.Protocol == "HTTP/1.1"
		}
	}
	if !denied || !forwarded {
		t.Errorf("records: denied DELETE %v, forwarded GET /health %v: %+v", denied, forwarded, e.rec.all())
	}
}

// HTTP/1.1 pipelining on one keep-alive connection: a denied request in
// the middle answers 403 and the next request still gets through; a
// chunked body reaches the backend whole.
func TestPipelinedKeepAliveAndChunked(t *testing.T) {
	e := newEnv(t, envOptions{policy: ingress("demo/p", resolved.HTTPRule{Method: "GET|POST", Path: "/ok.*"})})
	out := e.raw("GET /ok1 HTTP/1.1\r\nHost: b\r\n\r\n" +
		"GET /denied HTTP/1.1\r\nHost: b\r\n\r\n" +
		"POST /ok2 HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n" +
		"GET /ok3 HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
	if got := fmt.Sprint(statuses(out)); got != "[200 403 200 200]" {
		t.Fatalf("responses %v, want [200 403 200 200]:\n%s", got, out)
	}
	reqs := e.backend.requests()
	if len(reqs) != 3 || reqs[1].URI != "/ok2" || reqs[1].Body != "hello world" {
		t.Fatalf("backend saw %+v", reqs)
	}
}

// curlMulti fetches several URLs with one curl (one connection, reused)
// and returns "code version connects" per URL.
func (e *env) curlMulti(args ...string) []string {
	e.t.Helper()
	out, err := exec.Command("curl", append([]string{"-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %{http_version} %{num_connects}\n"}, args...)...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("curl %v: %v\n%s", args, err, out)
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

// h2c with prior knowledge and by Upgrade, with curl (one request per
// run: curl 7.88 cannot reuse an h2c connection even against a plain Go
// server), then allowed, denied and allowed again on one HTTP/2
// connection with Go's client. The backend gets HTTP/2 when the client
// spoke it by prior knowledge.
func TestH2C(t *testing.T) {
	e := newEnv(t, envOptions{policy: ingress("demo/p", resolved.HTTPRule{Method: "GET", Path: "/ok"})})
	for _, mode := range []string{"--http2-prior-knowledge", "--http2"} {
		for path, want := range map[string]string{"/ok": "200 2 1", "/no": "403 2 1"} {
			if got := e.curlMulti(mode, e.url(path)); len(got) != 1 || got[0] != want {
				t.Errorf("curl %s %s: %v, want %q (code, HTTP version, connections)", mode, path, got, want)
			}
		}
	}
	reqs := e.backend.requests()
	if len(reqs) != 2 || reqs[0].Proto != "HTTP/2.0" || reqs[1].URI != "/ok" {
		t.Errorf("backend saw %+v, want an HTTP/2 request then another", reqs)
	}

	dials := 0
	protos := new(http.Protocols)
	protos.SetUnencryptedHTTP2(true)
	c := &http.Client{Transport: &http.Transport{Protocols: protos, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials++
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}}
	for i, tc := range []struct {
		path string
		want int
	}{{"/ok", 200}, {"/no", 403}, {"/ok", 200}} {
		resp, err := c.Get(e.url(tc.path))
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want || resp.ProtoMajor != 2 {
			t.Errorf("request %d %s: %s %s, want %d over HTTP/2", i, tc.path, resp.Proto, resp.Status, tc.want)
		}
	}
	if dials != 1 {
		t.Errorf("%d connections, want 1 (a denial keeps the HTTP/2 connection)", dials)
	}
}

// gRPC through the proxy with grpc-go: an allowed method works, a denied
// one fails with PERMISSION_DENIED, and the connection keeps working.
func TestGRPC(t *testing.T) {
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("api.v1.UserService", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	e := newEnv(t, envOptions{grpc: gs, policy: ingress("demo/grpc-policy",
		resolved.HTTPRule{Method: "POST", Path: "/grpc.health.v1.Health/Check"})})
	cc, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := healthpb.NewHealthClient(cc)
	for i := range 2 {
		r, err := c.Check(ctx, &healthpb.HealthCheckRequest{Service: "api.v1.UserService"})
		if err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Check #%d: %v %v", i, r, err)
		}
		_, err = c.List(ctx, &healthpb.HealthListRequest{})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("List #%d: %v, want PermissionDenied", i, err)
		}
	}
	// Unknown services are denied too, with the gRPC status.
	_, err = c.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("Check of an unknown service (allowed method): %v, want NotFound from the backend", err)
	}
}

// Fail closed: a flow without L7 rules is closed unanswered; when the
// rules disappear mid-connection the next request is denied.
func TestNoPolicyFailsClosed(t *testing.T) {
	e := newEnv(t, envOptions{})
	out, err := exec.Command("curl", "-sS", "--max-time", "5", e.url("/")).CombinedOutput()
	if err == nil {
		t.Fatalf("curl succeeded without a policy: %s", out)
	}
	if len(e.backend.requests()) != 0 {
		t.Fatal("backend reached without a policy")
	}
	e.pol.set(ingress("demo/p", resolved.HTTPRule{}))
	dials := 0
	cl := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials++
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}}
	resp, err := cl.Get(e.url("/first"))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first request: %v %v", resp, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	e.pol.set(nil)
	resp, err = cl.Get(e.url("/second"))
	if err != nil || resp.StatusCode != 403 {
		t.Fatalf("after the policy went away: %v %v, want 403", resp, err)
	}
	resp.Body.Close()
	if e.backendSaw("/second") {
		t.Fatal("request forwarded after the policy went away")
	}
	if dials != 1 {
		t.Errorf("%d connections, want the second request on the first connection", dials)
	}
}

// An unreachable upstream answers 503 and records an Error.
func TestUpstreamDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	e := newEnv(t, envOptions{dst: dead, policy: ingress("demo/p", resolved.HTTPRule{})})
	code, _ := e.curl(e.url("/x"))
	if code != "503" {
		t.Fatalf("got %s, want 503", code)
	}
	var sawError bool
	for _, r := range e.rec.all() {
		if r.Verdict == proxy.Error && r.Type == proxy.Response && r.HTTP != nil && r.HTTP.Code == 503 {
			sawError = true
		}
	}
	if !sawError {
		t.Errorf("no Error record: %+v", e.rec.all())
	}
}

type oneBucket struct{ b *TokenBucket }

func (o oneBucket) RateLimitFor(proxy.Flow) *TokenBucket { return o.b }

// The token bucket answers 429 beyond max_tokens; denied requests take no
// token.
func TestRateLimit(t *testing.T) {
	b, err := NewTokenBucket(TokenBucketConfig{MaxTokens: 2, TokensPerFill: 1, FillInterval: time.Hour}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{rateLimits: oneBucket{b}, policy: ingress("backend/api-rate-limiting", resolved.HTTPRule{Method: ".*", Path: "/api/.*"})})
	if code, _ := e.curl(e.url("/denied")); code != "403" {
		t.Fatalf("denied request: %s", code)
	}
	for i, want := range []string{"200", "200", "429", "429"} {
		out, err := exec.Command("curl", "-sS", "-i", e.url("/api/x")).CombinedOutput()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(out), "HTTP/1.1 "+want) {
			t.Fatalf("request %d: %s, want %s", i, out, want)
		}
		if want == "429" && !strings.Contains(strings.ToLower(string(out)), "x-envoy-ratelimited: true") {
			t.Errorf("429 without x-envoy-ratelimited: %s", out)
		}
	}
	if n := len(e.backend.requests()); n != 2 {
		t.Errorf("backend saw %d requests, want 2", n)
	}
}

// The seed's l7-header-policy.yaml: header values are literal, as in
// Cilium ("X-Admin-Token: .*" requires the value ".*"), names are
// case-insensitive.
func TestSeedHeaderPolicy(t *testing.T) {
	pol := seedPolicy(t, "demo/frontend-0", "demo/backend-0", 8080, "sample-app.yaml", "l7-header-policy.yaml")
	e := newEnv(t, envOptions{policy: pol})
	for _, tc := range []struct {
		path   string
		header []string
		want   string
	}{
		{"/api/users", []string{"X-API-Version: v2"}, "200"},
		{"/api/users", []string{"x-api-version: v2"}, "200"},
		{"/api/users", []string{"X-API-Version: v1"}, "403"},
		{"/api/users", nil, "403"},
		{"/api/users", []string{"X-API-Version: v2", "X-API-Version: v3"}, "403"}, // joined "v2,v3"
		{"/admin/x", []string{"X-Admin-Token: secret"}, "403"},
		{"/admin/x", []string{"X-Admin-Token: .*"}, "200"},
	} {
		var args []string
		for _, h := range tc.header {
			args = append(args, "-H", h)
		}
		if code, _ := e.curl(append(args, e.url(tc.path))...); code != tc.want {
			t.Errorf("%s %v: %s, want %s", tc.path, tc.header, code, tc.want)
		}
	}
	// The token's value is redacted in records.
	for _, r := range e.rec.all() {
		for _, h := range r.HTTP.Headers {
			if h.Key == "X-Admin-Token" && h.Value != Redacted {
				t.Errorf("X-Admin-Token recorded as %q", h.Value)
			}
		}
	}
}

// headerMatches: FAIL decides; LOG, ADD, DELETE and REPLACE act on an
// allowed request whose header differs.
func TestHeaderMatches(t *testing.T) {
	e := newEnv(t, envOptions{policy: ingress("demo/p",
		resolved.HTTPRule{Path: "/fail", HeaderMatches: []resolved.HeaderMatch{{Name: "X-Tenant", Value: "blue"}}},
		resolved.HTTPRule{Path: "/act", HeaderMatches: []resolved.HeaderMatch{
			{Name: "X-Log", Value: "yes", Mismatch: resolved.MismatchLog},
			{Name: "X-Add", Value: "added", Mismatch: resolved.MismatchAdd},
			{Name: "X-Del", Value: "keep", Mismatch: resolved.MismatchDelete},
			{Name: "X-Rep", Value: "good", Mismatch: resolved.MismatchReplace},
		}},
	)})
	if code, _ := e.curl("-H", "X-Tenant: red", e.url("/fail")); code != "403" {
		t.Errorf("FAIL mismatch: %s, want 403", code)
	}
	if code, _ := e.curl("-H", "X-Tenant: blue", e.url("/fail")); code != "200" {
		t.Errorf("FAIL match: %s, want 200", code)
	}
	if code, _ := e.curl("-H", "X-Log: no", "-H", "X-Del: drop", "-H", "X-Rep: bad", e.url("/act")); code != "200" {
		t.Fatalf("actions: %s, want 200", code)
	}
	reqs := e.backend.requests()
	got := reqs[len(reqs)-1].Header
	if got.Get("X-Log") != "no" || got.Get("X-Add") != "added" || got.Get("X-Del") != "" || got.Get("X-Rep") != "good" {
		t.Errorf("backend headers after actions: %v", got)
	}
	var logged bool
	for _, r := range e.rec.all() {
		logged = logged || (r.Type == proxy.Request && strings.Contains(r.Reason, "X-Log (LOG)"))
	}
	if !logged {
		t.Errorf("LOG mismatch not recorded: %+v", e.rec.all())
	}
}
