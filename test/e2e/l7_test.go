package e2e

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bulwark-net/bulwark/internal/agent"
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
	out, _ := s.Exec(from, cmd...)
	return strings.TrimSpace(out)
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
