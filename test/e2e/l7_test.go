package e2e

import (
	"bytes"
	"context"
	"net"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bulwark-net/bulwark/internal/agent"
	"github.com/bulwark-net/bulwark/internal/sandbox"
	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
	"github.com/bulwark-net/bulwark/internal/sandbox/workload"
	"github.com/bulwark-net/bulwark/test/sandboxtest"
)

// curlCodes runs curl in a pod against urls (one connection reused when it
// can be) and returns "code:connects" per URL, space-separated, e.g.
// "403:1 200:0" (the second request reused the connection). Extra args
// come before the URLs.
func curlCodes(s *sandboxtest.Instance, from string, args []string, urls ...string) string {
	cmd := append([]string{"curl", "-s", "-m", "3", "-w", "%{http_code}:%{num_connects} "}, args...)
	for _, u := range urls {
		cmd = append(cmd, "-o", "/dev/null", u)
	}
	var out string
	if ns, pod, ok := strings.Cut(from, "/"); ok && ns != "deploy" && ns != "pod" {
		out = execIn(s, ns, pod, cmd...) // outside demo
	} else {
		out, _ = s.Exec(from, cmd...)
	}
	return strings.TrimSpace(out)
}

// execIn runs a command in a pod of any namespace (what 'bulwark exec'
// runs) and returns its combined output.
func execIn(s *sandboxtest.Instance, ns, pod string, cmd ...string) string {
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if _, err := sandbox.Exec(ctx, sandbox.ExecOptions{Instance: s.Name, Namespace: ns, Target: pod, Command: cmd,
		Stdin: strings.NewReader(""), Stdout: &out, Stderr: &out}); err != nil {
		return "exec failed: " + err.Error()
	}
	return out.String()
}

// TestL7HTTPPoliciesEnforced: the seed's l7-http-policy.yaml and
// l7-header-policy.yaml are enforced on real traffic through the
// transparent proxy, with local delivery on and off and over IPv6:
// allowed requests get the backend's 200, denied ones 403 "Access denied"
// on a connection that stays usable, peers the policy does not name are
// dropped at L3; killing the agent (and its proxy) fails the port closed,
// and a restarted agent enforces again.
func TestL7HTTPPoliciesEnforced(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		up   []string
	}{
		{"local-delivery", nil},
		{"no-local-delivery", []string{"--local-delivery=false"}},
		{"ipv6", []string{"--ipv6"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			s := sandboxtest.New(t, sandboxtest.Options{Prefix: "l7"})
			s.MustRun(append(append([]string{"up"}, c.up...), "-f", sandboxtest.Seed(t, "sample-app.yaml"))...)
			base := "http://backend:8080"
			if c.name == "ipv6" {
				backend := s.Pod("deploy/backend")
				for _, a := range backend.IPs {
					if a.Is6() && !a.Is4In6() {
						base = "http://[" + a.String() + "]:8080"
					}
				}
				if !strings.Contains(base, "[") {
					t.Fatalf("backend has no IPv6 address: %v", backend.IPs)
				}
			}
			testL7HTTP(t, s, base)
		})
	}
}

func testL7HTTP(t *testing.T, s *sandboxtest.Instance, base string) {
	const fe = "deploy/frontend"
	s.MustRun("apply", "-f", sandboxtest.Seed(t, "l7-http-policy.yaml"))
	for _, c := range []struct {
		method, path, want string
	}{
		{"GET", "/health", "200:1"},
		{"GET", "/metrics", "200:1"},
		{"GET", "/api/v1/users", "200:1"},
		{"POST", "/api/v1/users", "200:1"},
		{"OPTIONS", "/anything", "200:1"},
		{"DELETE", "/api/v1/users", "403:1"},
		{"GET", "/admin/secret", "403:1"},
		{"GET", "/health/../admin", "403:1"},
		{"GET", "/api/v2/users", "403:1"},
	} {
		if got := curlCodes(s, fe, []string{"-X", c.method, "--path-as-is"}, base+c.path); got != c.want {
			t.Errorf("%s %s%s: got %q, want %q", c.method, base, c.path, got, c.want)
		}
	}
	// Denied: 403 with Cilium's body, and the same connection serves the
	// next request.
	if out, _ := s.Exec(fe, "curl", "-s", "-m", "3", base+"/admin/secret"); !strings.Contains(out, "Access denied") {
		t.Errorf("denied request body %q, want Access denied", out)
	}
	if got := curlCodes(s, fe, nil, base+"/admin/secret", base+"/health", base+"/admin/x", base+"/api/v1/x"); got != "403:1 200:0 403:0 200:0" {
		t.Errorf("keep-alive across denials: %q, want 403:1 200:0 403:0 200:0 (one connection)", got)
	}
	// Many short connections that the proxy closes first: a client port
	// reused right after still reaches the proxy (no TIME_WAIT socket of
	// the old connection swallows the new SYN).
	s.Exec(fe, "wrk", "-t1", "-c4", "-d3s", "-H", "Connection: close", base+"/health")
	for i := range 20 {
		if got := curlCodes(s, fe, nil, base+"/health"); got != "200:1" {
			t.Fatalf("new connection %d after a burst of short ones: %q, want 200:1", i, got)
		}
	}
	// A peer the policy does not name is dropped at L3: no connection.
	if got := curlCodes(s, "deploy/database", nil, base+"/health"); got != "000:0" && got != "000:1" {
		t.Errorf("database -> backend: %q, want no answer (dropped)", got)
	}
	s.ExpectTCP("deploy/database", strings.TrimSuffix(strings.TrimPrefix(base, "http://"), ":8080"), "8080", false)

	// l7-header-policy instead: the header decides.
	s.MustRun("delete", "-f", sandboxtest.Seed(t, "l7-http-policy.yaml"))
	s.MustRun("apply", "-f", sandboxtest.Seed(t, "l7-header-policy.yaml"))
	if got := curlCodes(s, fe, []string{"-H", "X-API-Version: v2"}, base+"/api/items"); got != "200:1" {
		t.Errorf("GET /api/items with X-API-Version: v2: %q, want 200:1", got)
	}
	if got := curlCodes(s, fe, []string{"-H", "X-API-Version: v1"}, base+"/api/items"); got != "403:1" {
		t.Errorf("GET /api/items with X-API-Version: v1: %q, want 403:1", got)
	}
	if got := curlCodes(s, fe, nil, base+"/api/items"); got != "403:1" {
		t.Errorf("GET /api/items without the header: %q, want 403:1", got)
	}
	if got := curlCodes(s, fe, []string{"-H", "X-API-Version: v2"}, base+"/health"); got != "403:1" {
		t.Errorf("GET /health under the header policy: %q, want 403:1", got)
	}

	// Faults: the agent (and its proxy) dies -> the port fails closed;
	// a restarted agent enforces again.
	pid, _ := agent.RunningPID(s.Paths())
	if pid == 0 {
		t.Fatal("no agent pid")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if p, _ := agent.RunningPID(s.Paths()); p == 0 {
			break
		}
		if i > 100 {
			t.Fatalf("agent %d still holds its lock after SIGKILL", pid)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, path := range []string{"/api/items", "/health"} {
		if got := curlCodes(s, fe, []string{"-H", "X-API-Version: v2"}, base+path); !strings.HasPrefix(got, "000") {
			t.Errorf("GET %s with no proxy running: %q, want no answer (fail closed)", path, got)
		}
	}
	s.MustRun("up")
	ok := false
	for i := 0; i < 20 && !ok; i++ { // the new agent may still be syncing
		ok = curlCodes(s, fe, []string{"-H", "X-API-Version: v2"}, base+"/api/items") == "200:1"
		if !ok {
			time.Sleep(250 * time.Millisecond)
		}
	}
	if !ok {
		t.Errorf("after the restart the allowed request does not pass")
	}
	if got := curlCodes(s, fe, nil, base+"/api/items"); got != "403:1" {
		t.Errorf("after the restart, GET /api/items without the header: %q, want 403:1", got)
	}
}

// TestL7GRPCPolicyEnforced: the seed's l7-grpc-policy.yaml through the
// transparent proxy, with a grpc-go client in the client pod: the allowed
// methods and the health check answer, any other method gets
// PERMISSION_DENIED on the same connection, another pod is dropped at L3.
func TestL7GRPCPolicyEnforced(t *testing.T) {
	t.Parallel()
	s := sandboxtest.New(t, sandboxtest.Options{Prefix: "l7g"})
	s.MustRun("up", "-f", sandboxtest.Seed(t, "sample-app.yaml"), "-f", "testdata/grpc-pods.yaml")
	s.MustRun("apply", "-f", sandboxtest.Seed(t, "l7-grpc-policy.yaml"))
	server := s.Pod("grpc-backend")
	target := net.JoinHostPort(server.IPs[0].String(), "9090")
	dial := func(from sandbox.PodInfo) *grpc.ClientConn {
		cc, err := grpc.NewClient("passthrough:///"+target, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				var c net.Conn
				err := netns.Do(from.NetnsPath, func() error {
					var err error
					c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
					return err
				})
				return c, err
			}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return cc
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cc := dial(s.Pod("grpc-client"))
	var out structpb.Struct
	if err := cc.Invoke(ctx, workload.MethodGetUser, wrapperspb.String("7"), &out); err != nil || out.GetFields()["user"].GetStringValue() != "7" {
		t.Fatalf("GetUser: %v %v", &out, err)
	}
	if err := cc.Invoke(ctx, workload.MethodListUsers, &emptypb.Empty{}, &out); err != nil {
		t.Fatalf("ListUsers: %v", err)
	}
	if r, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health Check: %v %v", r, err)
	}
	if err := cc.Invoke(ctx, "/api.v1.UserService/DeleteUser", wrapperspb.String("7"), &out); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("DeleteUser: %v, want PermissionDenied", err)
	}
	if _, err := healthpb.NewHealthClient(cc).List(ctx, &healthpb.HealthListRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("health List: %v, want PermissionDenied", err)
	}
	if err := cc.Invoke(ctx, workload.MethodGetUser, wrapperspb.String("8"), &out); err != nil {
		t.Fatalf("GetUser after denials: %v", err)
	}
	// Another pod: dropped at L3 (no connection, the call times out).
	short, cancel2 := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel2()
	if err := dial(s.Pod("deploy/frontend")).Invoke(short, workload.MethodGetUser, wrapperspb.String("7"), &out); status.Code(err) == codes.OK || status.Code(err) == codes.PermissionDenied {
		t.Fatalf("frontend -> grpc-backend: %v, want no connection", err)
	}

	// The calls are Hubble L7 flows: observe --protocol http shows them.
	flows := s.MustRun("observe", "--protocol", "http", "--last", "100", "-o", "json")
	var allowed, denied bool
	for _, line := range strings.Split(flows, "\n") {
		line = strings.ReplaceAll(line, " ", "") // protojson varies its spacing
		allowed = allowed || strings.Contains(line, `"verdict":"FORWARDED"`) && strings.Contains(line, "/api.v1.UserService/GetUser")
		denied = denied || strings.Contains(line, `"verdict":"DROPPED"`) && strings.Contains(line, "/api.v1.UserService/DeleteUser") &&
			strings.Contains(line, `"ingressDeniedBy":[{"name":"grpc-policy","namespace":"demo"`)
	}
	if !allowed || !denied {
		t.Errorf("observe --protocol http: forwarded GetUser flow %v, dropped DeleteUser flow denied by demo/grpc-policy %v", allowed, denied)
	}
}

// TestRateLimitEnforced: the seed's rate-limiting-policy.yaml, applied
// unchanged (its CiliumEnvoyConfig included), on the workload it names:
// requests within the token bucket get 200, beyond it 429 on the same
// connection; the CNP's L7 rule still answers 403 off /api/; another pod is
// dropped at L3.
func TestRateLimitEnforced(t *testing.T) {
	t.Parallel()
	s := sandboxtest.New(t, sandboxtest.Options{Prefix: "l7rl"})
	s.MustRun("up", "-f", "testdata/rate-limit-app.yaml")
	s.MustRun("apply", "-f", sandboxtest.Seed(t, "rate-limiting-policy.yaml"))
	const fe = "backend/frontend"
	if got := curlCodes(s, fe, nil, "http://api-server.backend:8080/health"); got != "403:1" {
		t.Errorf("GET /health: %q, want 403:1 (the CNP allows /api/ only)", got)
	}
	// The bucket starts full (max_tokens 100) and refills 100 per second:
	// requests on one connection until the first 429. Every request until
	// then got 200, at least max_tokens of them, and the connection stays.
	out := execIn(s, "backend", "frontend",
		"curl", "-s", "-m", "60", "-o", "/dev/null", "-w", "%{http_code} ", "http://api-server.backend:8080/api/[1-3000]")
	codes := strings.Fields(out)
	first429 := slices.Index(codes, "429")
	if first429 < 0 {
		t.Fatalf("no 429 in %d requests: %q", len(codes), out)
	}
	if first429 < 100 {
		t.Errorf("first 429 after %d requests, want at least max_tokens (100)", first429)
	}
	for i, c := range codes[:first429] {
		if c != "200" {
			t.Fatalf("request %d before the limit: %s", i, c)
		}
	}
	if n := len(codes); n != 3000 {
		t.Errorf("%d answers to 3000 requests", n)
	}
	// Another pod of the namespace: dropped at L3.
	if got := curlCodes(s, "backend/other", nil, "http://api-server.backend:8080/api/x"); !strings.HasPrefix(got, "000") {
		t.Errorf("other -> api-server: %q, want no answer (dropped)", got)
	}
}
