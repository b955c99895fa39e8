package httpproxy

import (
	"net/http"
	"slices"
	"testing"

	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/proxy"
)

// Cilium's rule semantics, rule by rule.
func TestRuleSemantics(t *testing.T) {
	req := func(method, target, host string, hdr ...string) *request {
		h := http.Header{}
		for i := 0; i+1 < len(hdr); i += 2 {
			h.Add(hdr[i], hdr[i+1])
		}
		return &request{method: method, target: target, host: host, header: h}
	}
	tests := []struct {
		name string
		rule resolved.HTTPRule
		req  *request
		want bool
	}{
		// Regexes match the whole value.
		{"path whole", resolved.HTTPRule{Path: "/status"}, req("GET", "/status", "a"), true},
		{"path not prefix", resolved.HTTPRule{Path: "/status"}, req("GET", "/status/x", "a"), false},
		{"path not suffix", resolved.HTTPRule{Path: "/status"}, req("GET", "/x/status", "a"), false},
		{"path alternation anchored", resolved.HTTPRule{Path: "/a|/b"}, req("GET", "/b/c", "a"), false},
		{"path query", resolved.HTTPRule{Path: "/s.*"}, req("GET", "/s?x=1", "a"), true},
		{"method regex", resolved.HTTPRule{Method: "GET|HEAD"}, req("HEAD", "/", "a"), true},
		{"method case", resolved.HTTPRule{Method: "GET"}, req("get", "/", "a"), false},
		{"host", resolved.HTTPRule{Host: `api\.example\.com`}, req("GET", "/", "api.example.com"), true},
		{"host with port", resolved.HTTPRule{Host: `api\.example\.com`}, req("GET", "/", "api.example.com:8080"), false},
		{"empty rule allows all", resolved.HTTPRule{}, req("DELETE", "/x", "a"), true},
		// headers: presence, "Name: value", "Name value"; literal values.
		{"header present", resolved.HTTPRule{Headers: []string{"X-Token"}}, req("GET", "/", "a", "X-Token", ""), true},
		{"header absent", resolved.HTTPRule{Headers: []string{"X-Token"}}, req("GET", "/", "a"), false},
		{"header colon value", resolved.HTTPRule{Headers: []string{"X-V: 2"}}, req("GET", "/", "a", "x-v", "2"), true},
		{"header space value", resolved.HTTPRule{Headers: []string{"X-V 2"}}, req("GET", "/", "a", "X-V", "2"), true},
		{"header value literal", resolved.HTTPRule{Headers: []string{"X-V: .*"}}, req("GET", "/", "a", "X-V", "anything"), false},
		{"header value with spaces", resolved.HTTPRule{Headers: []string{"X-V: a b"}}, req("GET", "/", "a", "X-V", "a b"), true},
		{"header repeated joined", resolved.HTTPRule{Headers: []string{"X-V: 1,2"}}, req("GET", "/", "a", "X-V", "1", "X-V", "2"), true},
		// headerMatches FAIL: exact, or presence without a value.
		{"match exact", resolved.HTTPRule{HeaderMatches: []resolved.HeaderMatch{{Name: "X-T", Value: "v"}}}, req("GET", "/", "a", "X-T", "v"), true},
		{"match mismatch", resolved.HTTPRule{HeaderMatches: []resolved.HeaderMatch{{Name: "X-T", Value: "v"}}}, req("GET", "/", "a", "X-T", "w"), false},
		{"match presence", resolved.HTTPRule{HeaderMatches: []resolved.HeaderMatch{{Name: "X-T"}}}, req("GET", "/", "a", "X-T", "w"), true},
		{"match LOG never denies", resolved.HTTPRule{HeaderMatches: []resolved.HeaderMatch{{Name: "X-T", Value: "v", Mismatch: resolved.MismatchLog}}}, req("GET", "/", "a"), true},
	}
	for _, tt := range tests {
		r, err := compileRule(tt.rule)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if got := r.matches(tt.req); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

// Every Stage must allow: the source's egress rules and the destination's
// ingress rules; a record of a forwarded request names both policies, a
// denial the denying one.
func TestStagesAllMustAllow(t *testing.T) {
	pol := &proxy.Policy{Stages: []proxy.Stage{
		{EndpointID: 1, Direction: resolved.Egress, Rules: &resolved.L7Rules{HTTP: []resolved.HTTPRule{{Path: "/api/.*"}}}, Policies: []string{"demo/frontend-egress"}},
		{EndpointID: 2, Direction: resolved.Ingress, Rules: &resolved.L7Rules{HTTP: []resolved.HTTPRule{{Method: "GET"}}}, Policies: []string{"demo/backend-ingress"}},
	}}
	e := newEnv(t, envOptions{policy: pol})
	for _, tc := range []struct{ method, path, want string }{
		{"GET", "/api/x", "200"},
		{"POST", "/api/x", "403"}, // ingress denies
		{"GET", "/other", "403"},  // egress denies
	} {
		if code, _ := e.curl("-X", tc.method, e.url(tc.path)); code != tc.want {
			t.Errorf("%s %s: %s, want %s", tc.method, tc.path, code, tc.want)
		}
	}
	byURL := map[string]proxy.Record{}
	for _, r := range e.rec.all() {
		if r.Type == proxy.Request {
			byURL[r.HTTP.Method+" "+r.HTTP.URL[len("http://"+e.addr):]] = r
		}
	}
	if r := byURL["GET /api/x"]; r.Verdict != proxy.Forwarded || !slices.Equal(r.Policies, []string{"demo/frontend-egress", "demo/backend-ingress"}) {
		t.Errorf("forwarded: %+v", r)
	}
	if r := byURL["POST /api/x"]; r.Verdict != proxy.Dropped || r.Direction != resolved.Ingress || r.EndpointID != 2 || !slices.Equal(r.Policies, []string{"demo/backend-ingress"}) {
		t.Errorf("denied by ingress: %+v", r)
	}
	if r := byURL["GET /other"]; r.Verdict != proxy.Dropped || r.Direction != resolved.Egress || !slices.Equal(r.Policies, []string{"demo/frontend-egress"}) {
		t.Errorf("denied by egress: %+v", r)
	}
}
