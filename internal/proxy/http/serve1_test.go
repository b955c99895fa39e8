package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/proxy"
)

// rawBackend answers every HTTP/1.1 request without a body with "ok\n",
// allocating nothing per request, so that an allocation count of an
// exchange through the proxy is the proxy's. It reports its connections'
// remote addresses on conns.
func rawBackend(t testing.TB, conns chan<- string) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if conns != nil {
				conns <- c.RemoteAddr().String()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					for {
						line, err := br.ReadSlice('\n')
						if err != nil {
							return
						}
						if len(line) <= 2 {
							break
						}
					}
					if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { l.Close() })
	return netip.MustParseAddrPort(l.Addr().String())
}

// rawExchange sends req on c and reads one response with a
// Content-Length body, allocating nothing; it returns the status code.
func rawExchange(c net.Conn, br *bufio.Reader, req []byte) (int, error) {
	if _, err := c.Write(req); err != nil {
		return 0, err
	}
	status := 0
	cl := 0
	for first := true; ; first = false {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		if first && len(line) >= 12 {
			status = int(line[9]-'0')*100 + int(line[10]-'0')*10 + int(line[11]-'0')
		}
		if v, ok := bytes.CutPrefix(line, []byte("Content-Length: ")); ok {
			for _, d := range v {
				cl = cl*10 + int(d-'0')
			}
		}
	}
	if _, err := br.Discard(cl); err != nil {
		return 0, err
	}
	return status, nil
}

// serveListener serves a loopback listener's connections with p, as flows
// to dst of identity id.
func serveListener(t testing.TB, p *Proxy, dst netip.AddrPort, id uint32) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
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
			f := proxy.Flow{Src: netip.MustParseAddrPort(c.RemoteAddr().String()), Dst: dst, Protocol: resolved.ProtoTCP, SrcIdentity: identity.NumericIdentity(id)}
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
	})
	return l.Addr().String()
}

// The allowed-request hot path (HTTP/1.1 keep-alive, one rule, records
// on) allocates a bounded number of objects per request: what net/http's
// parsers need for the request and the response, the Records, and little
// else. A regression (a goroutine, a context or a header copy per request)
// fails this.
func TestAllowedRequestAllocs(t *testing.T) {
	dst := rawBackend(t, nil)
	p, err := New(Options{
		Policies: &staticPolicy{pol: ingress("demo/p", resolved.HTTPRule{Method: "GET", Path: "/api/v1/.*"})},
		Dialer:   loopbackDialer{},
		Record:   func(proxy.Record) {},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	addr := serveListener(t, p, dst, 1001)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	req := []byte("GET /api/v1/users HTTP/1.1\r\nHost: app\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n")
	denied := []byte("GET /admin HTTP/1.1\r\nHost: app\r\n\r\n")
	for _, tc := range []struct {
		name   string
		req    []byte
		status int
		max    float64
	}{
		// Measured 31 (go1.26): ReadRequest ~10, ReadResponse ~9, the
		// upstream request ~8, Records ~6.
		{"allowed", req, 200, 40},
		{"denied", denied, 403, 25},
	} {
		var exchErr error
		allocs := testing.AllocsPerRun(200, func() {
			code, err := rawExchange(c, br, tc.req)
			if err == nil && code != tc.status {
				err = &statusErr{code}
			}
			if err != nil && exchErr == nil {
				exchErr = err
			}
		})
		if exchErr != nil {
			t.Fatalf("%s: %v", tc.name, exchErr)
		}
		t.Logf("%s: %.1f allocations per request", tc.name, allocs)
		if allocs > tc.max {
			t.Errorf("%s: %.1f allocations per request, want at most %.0f", tc.name, allocs, tc.max)
		}
	}
}

type statusErr struct{ code int }

func (e *statusErr) Error() string { return "status " + strconv.Itoa(e.code) }

// A clean upstream connection is reused by the next client connection of
// the same source address, identity and destination, never by another
// identity's.
func TestUpstreamReuse(t *testing.T) {
	conns := make(chan string, 16)
	dst := rawBackend(t, conns)
	p, err := New(Options{
		Policies: &staticPolicy{pol: ingress("demo/p", resolved.HTTPRule{Path: "/api/.*"})},
		Dialer:   loopbackDialer{},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	a, b := serveListener(t, p, dst, 1001), serveListener(t, p, dst, 1002)
	get := func(addr string) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		code, err := rawExchange(c, bufio.NewReader(c), []byte("GET /api/x HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"))
		if err != nil || code != 200 {
			t.Fatalf("GET via %s: %d %v", addr, code, err)
		}
		// The proxy closes the client connection after the answer; the
		// upstream connection is released then.
		_, _ = io.Copy(io.Discard, c)
	}
	get(a)
	get(a)
	get(b)
	get(a)
	close(conns)
	var seen []string
	for c := range conns {
		seen = append(seen, c)
	}
	if len(seen) != 2 {
		t.Fatalf("backend connections %v: want one for identity 1001 (reused) and one for 1002", seen)
	}
}

// A request the lean path does not serve itself (here an absolute-form
// target and an h2c Upgrade) is handed to http.Server whole, on a
// connection that already carried a lean request.
func TestLeanHandOff(t *testing.T) {
	e := newEnv(t, envOptions{policy: ingress("demo/p", resolved.HTTPRule{Path: "/a.*"})})
	out := e.raw("GET /a1 HTTP/1.1\r\nHost: app\r\n\r\n" +
		"GET http://app/a2 HTTP/1.1\r\nHost: app\r\n\r\n" +
		"GET /b HTTP/1.1\r\nHost: app\r\n\r\n" +
		"GET /a3 HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
	if got := statuses(out); len(got) != 4 || got[0] != 200 || got[1] != 200 || got[2] != 403 || got[3] != 200 {
		t.Fatalf("statuses %v:\n%s", got, out)
	}
	var uris []string
	for _, r := range e.backend.requests() {
		uris = append(uris, r.URI)
	}
	if strings.Join(uris, " ") != "/a1 /a2 /a3" {
		t.Errorf("backend saw %v", uris)
	}
}

// Connection handling of the lean path as http.Server's: HTTP/1.0
// keep-alive, the CR LF an old client sends after a POST body, a denied
// request's small body discarded with the connection kept, a large one
// closing it.
func TestLeanConnectionHandling(t *testing.T) {
	e := newEnv(t, envOptions{policy: ingress("demo/p", resolved.HTTPRule{Path: "/a.*"})})
	out := e.raw("GET /a1 HTTP/1.0\r\nHost: app\r\nConnection: keep-alive\r\n\r\n" +
		"POST /a2 HTTP/1.1\r\nHost: app\r\nContent-Length: 2\r\n\r\nhi\r\n" +
		"POST /denied HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nbody!" +
		"GET /a3 HTTP/1.0\r\nHost: app\r\n\r\n" +
		"GET /a4 HTTP/1.1\r\nHost: app\r\n\r\n")
	if got := statuses(out); len(got) != 4 || got[0] != 200 || got[1] != 200 || got[2] != 403 || got[3] != 200 {
		t.Fatalf("statuses %v (want the connection closed after the HTTP/1.0 request without keep-alive):\n%s", got, out)
	}
	big := strings.Repeat("x", maxDrainBody+1024)
	out = e.raw("POST /denied HTTP/1.1\r\nHost: app\r\nContent-Length: " + strconv.Itoa(len(big)) + "\r\n\r\n" + big +
		"GET /a5 HTTP/1.1\r\nHost: app\r\n\r\n")
	if got := statuses(out); len(got) != 1 || got[0] != 403 {
		t.Fatalf("after a large denied body: statuses %v, want only 403 and the connection closed", got)
	}
	var uris []string
	for _, r := range e.backend.requests() {
		uris = append(uris, r.URI)
	}
	if strings.Join(uris, " ") != "/a1 /a2 /a3" {
		t.Errorf("backend saw %v", uris)
	}
}
