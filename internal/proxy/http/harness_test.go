package httpproxy

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/proxy"
)

// seen is what the backend received of one request.
type seen struct {
	Method, URI, Host, Proto string
	Header                   http.Header
	Body                     string
}

// backend is a real HTTP/1.1 + h2c server on loopback that echoes what it
// received and remembers every request.
type backend struct {
	addr netip.AddrPort
	mu   sync.Mutex
	reqs []seen
}

func (b *backend) requests() []seen {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]seen(nil), b.reqs...)
}

func startBackend(t *testing.T, extra http.Handler) *backend {
	t.Helper()
	b := &backend{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = netip.MustParseAddrPort(l.Addr().String())
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if extra != nil && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			extra.ServeHTTP(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		s := seen{Method: r.Method, URI: r.RequestURI, Host: r.Host, Proto: r.Proto, Header: r.Header.Clone(), Body: string(body)}
		b.mu.Lock()
		b.reqs = append(b.reqs, s)
		b.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return b
}

// staticPolicy is a PolicySource with one fixed Policy for every flow (ok
// false when nil).
type staticPolicy struct {
	mu  sync.Mutex
	pol *proxy.Policy
}

func (s *staticPolicy) PolicyFor(proxy.Flow) (proxy.Policy, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pol == nil {
		return proxy.Policy{}, false
	}
	return *s.pol, true
}

func (s *staticPolicy) set(p *proxy.Policy) {
	s.mu.Lock()
	s.pol = p
	s.mu.Unlock()
}

func ingress(policy string, rules ...resolved.HTTPRule) *proxy.Policy {
	return &proxy.Policy{Stages: []proxy.Stage{{EndpointID: 7, Direction: resolved.Ingress, Rules: &resolved.L7Rules{HTTP: rules}, Policies: []string{policy}}}}
}

// loopbackDialer dials the original destination on loopback.
type loopbackDialer struct{}

func (loopbackDialer) DialUpstream(ctx context.Context, f proxy.Flow) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", f.Dst.String())
}

type recorder struct {
	mu   sync.Mutex
	recs []proxy.Record
}

func (r *recorder) record(rec proxy.Record) {
	r.mu.Lock()
	r.recs = append(r.recs, rec)
	r.mu.Unlock()
}

func (r *recorder) all() []proxy.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]proxy.Record(nil), r.recs...)
}

// env is a proxy serving a plain loopback listener whose connections all
// belong to a flow to the backend (the transparent redirect's stand-in:
// ServeConn is the same either way).
type env struct {
	t       *testing.T
	backend *backend
	proxy   *Proxy
	addr    string // the proxy's listener
	pol     *staticPolicy
	rec     *recorder
}

type envOptions struct {
	// dst, when set, is the flows' destination instead of the echo backend.
	dst        netip.AddrPort
	policy     *proxy.Policy
	grpc       http.Handler
	rateLimits RateLimitSource
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	e := &env{t: t, backend: startBackend(t, o.grpc), pol: &staticPolicy{pol: o.policy}, rec: &recorder{}}
	p, err := New(Options{Policies: e.pol, Dialer: loopbackDialer{}, Record: e.rec.record, RateLimits: o.rateLimits})
	if err != nil {
		t.Fatal(err)
	}
	e.proxy = p
	if o.dst.IsValid() {
		e.backend.addr = o.dst
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = l.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			f := proxy.Flow{Src: netip.MustParseAddrPort(c.RemoteAddr().String()), Dst: e.backend.addr, Protocol: resolved.ProtoTCP, SrcIdentity: 1001, DstIdentity: 1002}
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.ServeConn(ctx, c, f)
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		cancel()
		wg.Wait()
		p.Close()
	})
	return e
}

// curl runs curl against the proxy and returns status code and body.
func (e *env) curl(args ...string) (code string, body string) {
	e.t.Helper()
	out, err := exec.Command("curl", append([]string{"-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"}, args...)...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("curl %v: %v\n%s", args, err, out)
	}
	s := string(out)
	i := strings.LastIndex(s, "\n")
	return s[i+1:], s[:i]
}

func (e *env) url(path string) string { return "http://" + e.addr + path }

// raw sends bytes on one connection and returns everything the proxy
// answered until it closed the connection (or 5 s passed). The last
// request should ask for Connection: close.
func (e *env) raw(req string) string {
	e.t.Helper()
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, req); err != nil {
		e.t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	out, _ := io.ReadAll(c)
	return string(out)
}

// statuses parses the HTTP/1.1 responses of a raw exchange.
func statuses(out string) []int {
	var codes []int
	br := bufio.NewReader(strings.NewReader(out))
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return codes
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		codes = append(codes, resp.StatusCode)
	}
}

// backendSaw reports whether the backend received a request whose
// request-target contains s.
func (e *env) backendSaw(s string) bool {
	for _, r := range e.backend.requests() {
		if strings.Contains(r.URI, s) {
			return true
		}
	}
	return false
}
