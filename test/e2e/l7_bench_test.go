package e2e

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bulwark-net/bulwark/test/sandboxtest"
)

// wrkResult is what one wrk run measured.
type wrkResult struct {
	rps      float64
	p50, p99 time.Duration
}

var (
	wrkRPS = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkPct = regexp.MustCompile(`(?m)^\s+(50|99)(?:\.000)?%\s+([0-9.]+)(us|ms|s)\s*$`)
)

func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	m := wrkRPS.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no Requests/sec in wrk output:\n%s", out)
	}
	r.rps, _ = strconv.ParseFloat(m[1], 64)
	for _, p := range wrkPct.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(p[2], 64)
		d := time.Duration(v * float64(map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[p[3]]))
		if p[1] == "50" {
			r.p50 = d
		} else {
			r.p99 = d
		}
	}
	return r, nil
}

// TestL7ProxyPathBenchmark measures HTTP/1.1 through the transparent L7
// proxy against the same pair direct, in one run (wrk from frontend to one
// backend pod, keep-alive and a new connection per request): requests/s
// ratio and added p50/p99 latency, logged. It asserts nothing about time
// (a measurement, not a timed test) and runs only when asked:
//
//	BULWARK_BENCH_L7=1 go test -run L7ProxyPathBenchmark -v ./test/e2e/
//
// Windows alternate direct/proxy twice and the medians are compared;
// BULWARK_BENCH_WINDOW (default 5s) sets their length.
func TestL7ProxyPathBenchmark(t *testing.T) {
	if os.Getenv("BULWARK_BENCH_L7") == "" {
		t.Skip("a measurement: set BULWARK_BENCH_L7=1 to run it")
	}
	b := t
	s := sandboxtest.New(t, sandboxtest.Options{Prefix: "l7b"})
	s.MustRun("up", "-f", sandboxtest.Seed(b, "sample-app.yaml"))
	backend := s.Pod("deploy/backend").IPs[0].String()
	url := "http://" + backend + ":8080/health"
	window := envDuration("BULWARK_BENCH_WINDOW", 5*time.Second)
	run := func(keepAlive bool) wrkResult {
		args := []string{"wrk", "-t1", "-c4", "-d" + strconv.Itoa(int(window.Seconds())) + "s", "--latency"}
		if !keepAlive {
			args = append(args, "-H", "Connection: close")
		}
		out, _ := s.Exec("deploy/frontend", append(args, url)...)
		r, err := parseWrk(out)
		if err != nil {
			b.Fatal(err)
		}
		return r
	}
	policy := sandboxtest.Seed(b, "l7-http-policy.yaml")
	{
		for _, ka := range []bool{true, false} {
			var direct, proxied []wrkResult
			for round := 0; round < 2; round++ { // direct, proxy, direct, proxy
				s.MustRun("delete", "-f", policy)
				direct = append(direct, run(ka))
				s.MustRun("apply", "-f", policy)
				if got := curlCodes(s, "deploy/frontend", nil, url, "http://"+backend+":8080/admin"); got != "200:1 403:0" {
					b.Fatalf("the proxy is not in the path: %q", got)
				}
				proxied = append(proxied, run(ka))
			}
			d, p := median(direct), median(proxied)
			name := "keepalive"
			if !ka {
				name = "newconn"
			}
			b.Logf("%s: direct %.0f req/s p50 %v p99 %v | proxy %.0f req/s p50 %v p99 %v | ratio %.2f, added p50 %v p99 %v",
				name, d.rps, d.p50, d.p99, p.rps, p.p50, p.p99, p.rps/d.rps, p.p50-d.p50, p.p99-d.p99)
		}
	}
}

// median of two or more results, field by field.
func median(rs []wrkResult) wrkResult {
	pick := func(f func(wrkResult) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		for i := range v {
			for j := i + 1; j < len(v); j++ {
				if v[j] < v[i] {
					v[i], v[j] = v[j], v[i]
				}
			}
		}
		if len(v)%2 == 0 {
			return (v[len(v)/2-1] + v[len(v)/2]) / 2
		}
		return v[len(v)/2]
	}
	return wrkResult{
		rps: pick(func(r wrkResult) float64 { return r.rps }),
		p50: time.Duration(pick(func(r wrkResult) float64 { return float64(r.p50) })),
		p99: time.Duration(pick(func(r wrkResult) float64 { return float64(r.p99) })),
	}
}

func envDuration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(strings.TrimSpace(os.Getenv(name))); err == nil && v > 0 {
		return v
	}
	return def
}
