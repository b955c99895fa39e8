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
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/proxy"
)

// wrkResult is what one wrk run measured.
type wrkResult struct {
	p50, p99 time.Duration
	rps      float64
}

var (
	wrkRPS     = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkLatency = regexp.MustCompile(`(?m)^\s+(50|99)(?:\.000)?%\s+([0-9.]+)(us|ms|s)\s*$`)
)

func runWrk(b *testing.B, url string, d time.Duration, extra ...string) wrkResult {
	b.Helper()
	args := append([]string{"-t1", "-c8", "-d" + d.String(), "--latency"}, extra...)
	out, err := exec.Command("wrk", append(args, url)...).CombinedOutput()
	if err != nil {
		b.Fatalf("wrk: %v\n%s", err, out)
	}
	var r wrkResult
	m := wrkRPS.FindSubmatch(out)
	if m == nil {
		b.Fatalf("wrk output without Requests/sec:\n%s", out)
	}
	r.rps, _ = strconv.ParseFloat(string(m[1]), 64)
	for _, l := range wrkLatency.FindAllSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(string(l[2]), 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[string(l[3])]
		dur := time.Duration(v * float64(unit)).Round(time.Microsecond)
		if string(l[1]) == "50" {
			r.p50 = dur
		} else {
			r.p99 = dur
		}
	}
	if strings.Contains(string(out), "Non-2xx") {
		b.Fatalf("wrk saw non-2xx answers:\n%s", out)
	}
	return r
}

// BenchmarkProxyVsDirect runs wrk against a backend on loopback directly
// and through the proxy (ServeConn behind a plain loopback listener, one
// allow rule), alternating, with HTTP/1.1 keep-alive and with a new
// connection per request. It reports the added p50/p99 latency and the
// requests/s ratio of each mode. Run it once:
//
//	go test -run XXX -bench ProxyVsDirect -benchtime 1x ./internal/proxy/http/
//
// BULWARK_BENCH_WINDOW (default 5s) is each wrk run's duration.
func BenchmarkProxyVsDirect(b *testing.B) {
	if _, err := exec.LookPath("wrk"); err != nil {
		b.Skip("wrk is not installed (scripts/setup.sh installs it)")
	}
	window := 5 * time.Second
	if v := os.Getenv("BULWARK_BENCH_WINDOW"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("BULWARK_BENCH_WINDOW: %v", err)
		}
		window = d
	}
	// The backend answers a small body, as a typical API health check.
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})}
	go func() { _ = backend.Serve(bl) }()
	defer backend.Close()
	dst := netip.MustParseAddrPort(bl.Addr().String())

	pol := &staticPolicy{pol: ingress("demo/bench", resolved.HTTPRule{Method: "GET", Path: "/api/v1/.*"})}
	p, err := New(Options{Policies: pol, Dialer: loopbackDialer{}, Record: func(proxy.Record) {}})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := pl.Accept()
			if err != nil {
				return
			}
			f := proxy.Flow{Src: netip.MustParseAddrPort(c.RemoteAddr().String()), Dst: dst, Protocol: resolved.ProtoTCP}
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.ServeConn(ctx, c, f)
			}()
		}
	}()
	defer func() {
		pl.Close()
		cancel()
		wg.Wait()
	}()

	const path = "/api/v1/users"
	direct, proxied := "http://"+bl.Addr().String()+path, "http://"+pl.Addr().String()+path
	b.ResetTimer()
	for range b.N {
		var table strings.Builder
		fmt.Fprintf(&table, "\n%-12s %10s %10s %10s %10s %12s %12s %8s\n", "mode", "p50 direct", "p50 proxy", "p99 direct", "p99 proxy", "rps direct", "rps proxy", "ratio")
		for _, mode := range []struct {
			name  string
			extra []string
		}{{"keep-alive", nil}, {"new-conn", []string{"-H", "Connection: close"}}} {
			// Warm both paths, then measure them back to back.
			runWrk(b, direct, time.Second, mode.extra...)
			runWrk(b, proxied, time.Second, mode.extra...)
			d := runWrk(b, direct, window, mode.extra...)
			x := runWrk(b, proxied, window, mode.extra...)
			ratio := x.rps / d.rps
			fmt.Fprintf(&table, "%-12s %10v %10v %10v %10v %12.0f %12.0f %7.0f%%\n", mode.name, d.p50, x.p50, d.p99, x.p99, d.rps, x.rps, 100*ratio)
			b.ReportMetric(float64((x.p50 - d.p50).Microseconds()), mode.name+"-added-p50-us")
			b.ReportMetric(float64((x.p99 - d.p99).Microseconds()), mode.name+"-added-p99-us")
			b.ReportMetric(100*ratio, mode.name+"-rps-%-of-direct")
		}
		b.Log(table.String())
	}
}

// BenchmarkRequestKeepAlive measures one HTTP/1.1 request through the
// proxy on a keep-alive connection, against the same request sent
// directly (sub-benchmarks direct and proxy): ns/op and allocs/op of the
// whole exchange, client and backend included.
func BenchmarkRequestKeepAlive(b *testing.B) { benchRequest(b, true) }

// BenchmarkRequestNewConn is BenchmarkRequestKeepAlive with a new client
// connection per request (Connection: close).
func BenchmarkRequestNewConn(b *testing.B) { benchRequest(b, false) }

func benchRequest(b *testing.B, keepAlive bool) {
	dst := func() netip.AddrPort {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok\n") })}
		go func() { _ = srv.Serve(l) }()
		b.Cleanup(func() { _ = srv.Close() })
		return netip.MustParseAddrPort(l.Addr().String())
	}()
	p, err := New(Options{Policies: &staticPolicy{pol: ingress("demo/bench", resolved.HTTPRule{Method: "GET", Path: "/api/v1/.*"})}, Dialer: loopbackDialer{}, Record: func(proxy.Record) {}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pl.Close() })
	go func() {
		for {
			c, err := pl.Accept()
			if err != nil {
				return
			}
			go p.ServeConn(context.Background(), c, proxy.Flow{Src: netip.MustParseAddrPort(c.RemoteAddr().String()), Dst: dst, Protocol: resolved.ProtoTCP})
		}
	}()
	for _, tc := range []struct{ name, addr string }{{"direct", dst.String()}, {"proxy", pl.Addr().String()}} {
		b.Run(tc.name, func(b *testing.B) {
			c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableKeepAlives: !keepAlive}}
			url := "http://" + tc.addr + "/api/v1/users"
			b.ReportAllocs()
			for b.Loop() {
				resp, err := c.Get(url)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
		})
	}
}
