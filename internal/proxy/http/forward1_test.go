package httpproxy

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// startServer serves h on loopback and returns its address.
func startServer(t *testing.T, h http.Handler) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return netip.MustParseAddrPort(l.Addr().String())
}

// HTTP/1.1 messages the fast path must carry intact: a streamed chunked
// response with trailers, HEAD, 100-continue, hop-by-hop headers, and a
// backend that closes its keep-alive connection between requests.
func TestHTTP1Forwarding(t *testing.T) {
	dst := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/stream":
			w.Header().Set("Trailer", "X-Sum")
			w.Header()["Content-Type"] = nil // the backend sends none
			for i := range 3 {
				_, _ = io.WriteString(w, strings.Repeat("x", i+1)+"\n")
				w.(http.Flusher).Flush()
			}
			w.Header().Set("X-Sum", "6")
		case "/upload":
			b, _ := io.ReadAll(r.Body)
			_, _ = io.WriteString(w, "got "+string(b)+" keep-alive="+r.Header.Get("Keep-Alive")+" x-hop="+r.Header.Get("X-Hop"))
		case "/close":
			w.Header().Set("Connection", "close")
			_, _ = io.WriteString(w, "closing")
		default:
			w.Header().Set("Content-Length", "5")
			_, _ = io.WriteString(w, "hello")
		}
	}))
	e := newEnv(t, envOptions{dst: dst, policy: ingress("demo/p", resolved.HTTPRule{})})

	resp, err := http.Get(e.url("/stream"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "x\nxx\nxxx\n" || resp.Trailer.Get("X-Sum") != "6" || len(resp.TransferEncoding) == 0 {
		t.Errorf("stream: %q trailer %v te %v", body, resp.Trailer, resp.TransferEncoding)
	}
	if _, ok := resp.Header["Content-Type"]; ok {
		t.Errorf("stream: the proxy added Content-Type %q the backend did not send", resp.Header.Get("Content-Type"))
	}
	resp, err = http.Head(e.url("/head"))
	if err != nil || resp.StatusCode != 200 || resp.ContentLength != 5 {
		t.Errorf("HEAD: %v %v", resp, err)
	}
	out, err := exec.Command("curl", "-sS", "--max-time", "5", "-H", "Expect: 100-continue", "-H", "Connection: X-Hop", "-H", "X-Hop: 1",
		"-H", "Keep-Alive: timeout=5", "--data-binary", strings.Repeat("d", 2000), e.url("/upload")).CombinedOutput()
	if err != nil || string(out) != "got "+strings.Repeat("d", 2000)+" keep-alive= x-hop=" {
		t.Errorf("upload: %.80q %v", out, err)
	}
	// The backend closes after /close; the next request on the same client
	// connection is sent on a new upstream connection.
	out = []byte(e.raw("GET /close HTTP/1.1\r\nHost: a\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
	if got := statuses(string(out)); len(got) != 2 || got[0] != 200 || got[1] != 200 || !strings.HasSuffix(string(out), "hello") {
		t.Errorf("after an upstream close: %v\n%s", got, out)
	}
}
