package httpproxy

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// The bypass suite: every test allows a narrow set of requests and tries
// to reach something else, or to make the backend read a request other
// than the one the rules decided. Each checks the answer and that the
// backend never saw the forbidden target.

// allowPublic allows GET/POST under /public/ and /health, for host "app"
// (any port) or any host when host is "".
func allowPublic(host string) resolved.HTTPRule {
	return resolved.HTTPRule{Method: "GET|POST", Path: "/public/[^/]*|/health", Host: host}
}

func TestBypassDotSegments(t *testing.T) {
	e := newEnv(t, envOptions{policy: ingress("demo/p", allowPublic(""))})
	for _, path := range []string{"/public/../admin", "/public/./../admin", "/public/x/../../admin", "/./admin", "/public/..;/admin"} {
		if code, _ := e.curl("--path-as-is", e.url(path)); code != "403" {
			t.Errorf("%s: %s, want 403", path, code)
		}
	}
	if code, body := e.curl("--path-as-is", e.url("/public/a/../b")); code != "200" || !strings.Contains(body, `"URI":"/public/b"`) {
		t.Errorf("/public/a/../b: %s %s, want 200 with the backend reading /public/b", code, body)
	}
	if e.backendSaw("admin") || e.backendSaw("..") {
		t.Errorf("backend saw %+v", e.backend.requests())
	}
}

func TestBypassPercentEncoding(t *testing.T) {
	e := newEnv(t, envOptions{policy: ingress("demo/p", allowPublic(""))})
	for _, path := range []string{
		"/%61dmin", "/public/%2e%2e/admin", "/public/%2E%2E/admin", "/public%2F..%2Fadmin", "/public%2f..%2fadmin",
		"/public/a%2Fb", "/public/a%2fb", // one segment per the raw bytes, two once decoded: the rule allows one
		"/public/%252e%252e/admin", // double encoding stays encoded: matched and forwarded as %252e
	} {
		if code, body := e.curl("--path-as-is", e.url(path)); code != "403" {
			t.Errorf("%s: %s %s, want 403", path, code, body)
		}
	}
	for _, path := range []string{"/public/a%5Cb", "/public/a%5c..%5cadmin", "/public/%00", "/public/a%zz"} {
		if code, _ := e.curl("--path-as-is", e.url(path)); code != "400" {
			t.Errorf("%s: %s, want 400", path, code)
		}
	}
	// Encoded unreserved characters are decoded before matching and
	// forwarded decoded: the backend reads what the rules read.
	if code, body := e.curl("--path-as-is", e.url("/%70ublic/x")); code != "200" || !strings.Contains(body, `"URI":"/public/x"`) {
		t.Errorf("/%%70ublic/x: %s %s", code, body)
	}
	if e.backendSaw("admin") || e.backendSaw("%2F") || e.backendSaw("%2f") {
		t.Errorf("backend saw %+v", e.backend.requests())
	}
}

func TestBypassDoubleSlashes(t *testing.T) {
	e := newEnv(t, envOptions{policy: ingress("demo/p", allowPublic(""))})
	for _, path := range []string{"//admin", "/public//admin/x", "///public/x/../../admin"} {
		if code, _ := e.curl("--path-as-is", e.url(path)); code != "403" {
			t.Errorf("%s: %s, want 403", path, code)
		}
	}
	if code, body := e.curl("--path-as-is", e.url("//public///x")); code != "200" || !strings.Contains(body, `"URI":"/public/x"`) {
		t.Errorf("//public///x: %s %s, want 200 and /public/x at the backend", code, body)
	}
	if e.backendSaw("admin") || e.backendSaw("//") {
		t.Errorf("backend saw %+v", e.backend.requests())
	}
}

// An absolute-form target names another host and path; the upstream stays
// the flow's destination and the rules see the target's host and path.
func TestBypassAbsoluteForm(t *testing.T) {
	e := newEnv(t, envOptions{policy: ingress("demo/p", allowPublic("app(:[0-9]+)?"))})
	out := e.raw("GET http://app/admin HTTP/1.1\r\nHost: app\r\n\r\n" +
		"GET http://evil.example/public/x HTTP/1.1\r\nHost: app\r\n\r\n" +
		"GET http://app/public/../admin HTTP/1.1\r\nHost: app\r\n\r\n" +
		"GET http://app:8080/public/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
	if got := fmt.Sprint(statuses(out)); got != "[403 403 403 200]" {
		t.Fatalf("responses %s, want [403 403 403 200]:\n%s", got, out)
	}
	reqs := e.backend.requests()
	if len(reqs) != 1 || reqs[0].URI != "/public/x" || reqs[0].Host != "app:8080" {
		t.Errorf("backend saw %+v, want one origin-form /public/x for host app:8080", reqs)
	}
}

func TestBypassDuplicateHost(t *testing.T) {
	e := newEnv(t, envOptions{policy: ingress("demo/p", allowPublic("app"))})
	for _, req := range []string{
		"GET /public/x HTTP/1.1\r\nHost: app\r\nHost: evil\r\nConnection: close\r\n\r\n",
		"GET /public/x HTTP/1.1\r\nHost: evil\r\nHost: app\r\nConnection: close\r\n\r\n",
		"GET /public/x HTTP/1.1\r\nHost: app, evil\r\nConnection: close\r\n\r\n",
		"GET /public/x HTTP/1.1\r\nConnection: close\r\n\r\n",
	} {
		out := e.raw(req)
		if codes := statuses(out); len(codes) != 1 || (codes[0] != 400 && codes[0] != 403) {
			t.Errorf("%q: %v, want 400 or 403", req, codes)
		}
	}
	if n := len(e.backend.requests()); n != 0 {
		t.Errorf("backend saw %+v", e.backend.requests())
	}
}

// h2Exchange sends one HTTP/2 request made of raw header fields (pseudo
// headers included, in order) and returns the :status, or "RST" / "GOAWAY"
// when the proxy refused the stream or the connection.
func (e *env) h2Exchange(fields ...[2]string) string {
	e.t.Helper()
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		e.t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		e.t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range fields {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		e.t.Fatal(err)
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return "EOF"
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == 1 {
				return f.PseudoValue("status")
			}
		case *http2.RSTStreamFrame:
			return "RST"
		case *http2.GoAwayFrame:
			return "GOAWAY"
		}
	}
}

func TestBypassHTTP2PseudoHeaders(t *testing.T) {
	e := newEnv(t, envOptions{policy: ingress("demo/p", allowPublic("app"))})
	base := func(path string) [][2]string {
		return [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "app"}, {":path", path}}
	}
	if got := e.h2Exchange(base("/public/x")...); got != "200" {
		t.Fatalf("control request: %s, want 200", got)
	}
	for name, fields := range map[string][][2]string{
		"path without leading slash": base("admin"),
		"asterisk path":              base("*"),
		"empty path":                 base(""),
		"dot segments":               base("/public/../admin"),
		"CONNECT":                    {{":method", "CONNECT"}, {":authority", "app:80"}},
		"two :path":                  append(base("/public/x"), [2]string{":path", "/admin"}),
		"pseudo after regular":       {{":method", "GET"}, {":scheme", "http"}, {":authority", "app"}, {"x-a", "b"}, {":path", "/admin"}},
		"conflicting host":           append(base("/public/x"), [2]string{"host", "evil"}),
		"authority evil, host app":   {{":method", "GET"}, {":scheme", "http"}, {":authority", "evil"}, {":path", "/public/x"}, {"host", "app"}},
		"upper-case header name":     append(base("/admin"), [2]string{"X-Api", "v"}),
		"connection-specific header": append(base("/admin"), [2]string{"transfer-encoding", "chunked"}),
	} {
		if got := e.h2Exchange(fields...); got == "200" {
			t.Errorf("%s: 200", name)
		}
	}
	reqs := e.backend.requests()
	if len(reqs) != 1 || reqs[0].URI != "/public/x" || reqs[0].Host != "app" {
		t.Errorf("backend saw %+v, want only the control request", reqs)
	}
}

// CL.TE and TE.CL smuggling: whatever framing the proxy accepts, the
// request hidden in the body never reaches the backend as a request.
func TestBypassRequestSmuggling(t *testing.T) {
	e := newEnv(t, envOptions{policy: ingress("demo/p", allowPublic(""))})
	smuggled := "GET /admin HTTP/1.1\r\nHost: app\r\n\r\n"
	for name, req := range map[string]string{
		"CL.TE": "POST /public/x HTTP/1.1\r\nHost: app\r\nContent-Length: " + fmt.Sprint(5+len(smuggled)) + "\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled,
		"TE.CL": "POST /public/x HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" +
			fmt.Sprintf("%x\r\n", len(smuggled)) + smuggled + "\r\n0\r\n\r\n",
		"obfuscated TE":            "POST /public/x HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + smuggled,
		"TE with trailing garbage": "POST /public/x HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + smuggled,
		"duplicate Content-Length": "POST /public/x HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\nContent-Length: " + fmt.Sprint(len(smuggled)) + "\r\n\r\n" + smuggled,
		"Content-Length list":      "POST /public/x HTTP/1.1\r\nHost: app\r\nContent-Length: 0, " + fmt.Sprint(len(smuggled)) + "\r\n\r\n" + smuggled,
	} {
		out := e.raw(req + "GET /public/end HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
		for _, code := range statuses(out) {
			if code != 200 && code != 400 && code != 403 && code != 501 {
				t.Errorf("%s: status %d:\n%s", name, code, out)
			}
		}
		if e.backendSaw("/admin") {
			t.Fatalf("%s: the smuggled request reached the backend: %+v", name, e.backend.requests())
		}
		for _, r := range e.backend.requests() {
			if strings.Contains(r.Body, "/admin") && r.Method != "POST" {
				t.Fatalf("%s: %+v", name, r)
			}
		}
	}
}

// obs-fold continuation lines cannot sneak a value past a header rule:
// the proxy rejects or unfolds them, and decides on what it forwards.
func TestBypassObsFold(t *testing.T) {
	e := newEnv(t, envOptions{policy: ingress("demo/p", resolved.HTTPRule{Path: "/api/.*", Headers: []string{"X-API-Version: v2"}})})
	for _, req := range []string{
		"GET /api/x HTTP/1.1\r\nHost: app\r\nX-API-Version: v1\r\n v2\r\nConnection: close\r\n\r\n",
		"GET /api/x HTTP/1.1\r\nHost: app\r\nX-API-Version:\r\n\tv2\r\nConnection: close\r\n\r\n",
		"GET /api/x HTTP/1.1\r\nHost: app\r\nX-Other: a\r\n X-API-Version: v2\r\nConnection: close\r\n\r\n",
	} {
		out := e.raw(req)
		codes := statuses(out)
		if len(codes) != 1 {
			t.Errorf("%q: %v", req, codes)
			continue
		}
		if codes[0] == 200 {
			// Allowed only if the backend reads exactly the required value.
			last := e.backend.requests()
			if got := last[len(last)-1].Header.Values("X-Api-Version"); len(got) != 1 || got[0] != "v2" {
				t.Errorf("%q: forwarded with X-API-Version %q", req, got)
			}
		}
	}
	if len(e.backend.requests()) != 0 {
		t.Logf("backend saw %+v", e.backend.requests())
	}
}

// Header names are case-insensitive in rules; methods are case-sensitive
// (RFC 9110), so "get" is not "GET".
func TestBypassHeaderAndMethodCase(t *testing.T) {
	e := newEnv(t, envOptions{policy: ingress("demo/p",
		resolved.HTTPRule{Method: "GET", Path: "/api/.*", Headers: []string{"X-API-Version: v2"}},
	)})
	out := e.raw("GET /api/a HTTP/1.1\r\nHost: app\r\nx-api-version: v2\r\n\r\n" +
		"GET /api/b HTTP/1.1\r\nHost: app\r\nX-API-VERSION: v2\r\n\r\n" +
		"GET /api/c HTTP/1.1\r\nHost: app\r\nX-API-Version: V2\r\n\r\n" +
		"get /api/d HTTP/1.1\r\nHost: app\r\nX-API-Version: v2\r\n\r\n" +
		"GET /api/e HTTP/1.1\r\nHost: app\r\nX-API-Version : v2\r\nConnection: close\r\n\r\n")
	codes := statuses(out)
	if len(codes) < 4 || fmt.Sprint(codes[:4]) != "[200 200 403 403]" {
		t.Fatalf("responses %v, want [200 200 403 403 ...]:\n%s", codes, out)
	}
	for _, p := range []string{"/api/c", "/api/d", "/api/e"} {
		if e.backendSaw(p) {
			t.Errorf("%s reached the backend", p)
		}
	}
}
