package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bulwark-net/bulwark/internal/datapath"
	"github.com/bulwark-net/bulwark/internal/fqdn"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/api"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/proxy"
	dnsproxy "github.com/bulwark-net/bulwark/internal/proxy/dns"
)

// BenchmarkDNSProxyLatency measures what the DNS proxy adds to a lookup,
// datapath update included, at a steady rate of new names (default 1000/s,
// every query a name never seen): the same real miekg/dns server on
// loopback is asked directly and through the proxy, in alternating windows
// of one run, and the proxy's answers are released only after the agent's
// FQDN hook (name cache, policy repository, datapath Sync of ipcache and
// selector lists) returned. Run with -benchtime 1x:
//
//	go test -run XXX -bench DNSProxyLatency -benchtime 1x ./internal/agent/
//
// BULWARK_BENCH_DNS_RATE (queries/s), BULWARK_BENCH_DNS_QUERIES (per
// mode) and BULWARK_BENCH_DNS_MAX_NAMES (the cache's per-endpoint bound,
// hence the number of learned addresses the datapath holds) tune it.
func BenchmarkDNSProxyLatency(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root (BPF maps)")
	}
	rate := envInt("BULWARK_BENCH_DNS_RATE", 1000)
	total := envInt("BULWARK_BENCH_DNS_QUERIES", 5000)
	srv := benchServer(b)
	n, learner := benchNode(b)
	var learnNs []time.Duration
	var lmu sync.Mutex
	learn := func(ctx context.Context, f proxy.Flow, eps []uint32, a dnsproxy.Answer) error {
		s := time.Now()
		err := learner.Learn(ctx, f, eps, a)
		lmu.Lock()
		learnNs = append(learnNs, time.Since(s))
		lmu.Unlock()
		return err
	}
	up := &timedUpstream{u: dnsproxy.DialerUpstream{Dialer: plainDialer{}}}
	stage := proxy.Stage{EndpointID: 1, Direction: resolved.Egress, Rules: &resolved.L7Rules{DNS: []resolved.DNSRule{{MatchPattern: "*"}}}, Policies: []string{"bench/fqdn"}}
	p, err := dnsproxy.New(dnsproxy.Options{Policies: staticPolicy{stage}, Upstream: up, Learn: learn})
	if err != nil {
		b.Fatal(err)
	}
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(func() { cancel(); pc.Close() })
	go p.ServeUDP(ctx, pc, func(src net.Addr) (proxy.Flow, bool) {
		return proxy.Flow{Src: netip.MustParseAddrPort(src.String()), Dst: srv, Protocol: resolved.ProtoUDP}, true
	})
	proxied := pc.LocalAddr().String()

	const window = 250
	var direct, viaProxy []time.Duration
	var failures atomic.Int64
	seq := 0
	b.ResetTimer()
	for done := 0; done < total; done += window {
		for _, mode := range []string{"direct", "proxy"} {
			addr := srv.String()
			if mode == "proxy" {
				addr = proxied
			}
			lat := paced(rate, window, func() string { seq++; return fmt.Sprintf("n%d.%s.bench.test.", seq, mode) }, addr, &failures)
			if mode == "direct" {
				direct = append(direct, lat...)
			} else {
				viaProxy = append(viaProxy, lat...)
			}
		}
	}
	b.StopTimer()
	if f := failures.Load(); f > 0 {
		b.Fatalf("%d queries failed", f)
	}
	entries, _ := learner.cache.Len()
	dp, dp99 := pct(direct, 50), pct(direct, 99)
	pp, pp99 := pct(viaProxy, 50), pct(viaProxy, 99)
	lmu.Lock() // a late answer's learn may still be recording
	lp, lp99 := pct(learnNs, 50), pct(learnNs, 99)
	lmu.Unlock()
	up.mu.Lock()
	upp, upp99 := pct(up.d, 50), pct(up.d, 99)
	up.mu.Unlock()
	b.ReportMetric(float64(pp-dp)/1e3, "added-p50-µs")
	b.ReportMetric(float64(pp99-dp99)/1e3, "added-p99-µs")
	b.ReportMetric(float64(pp99)/float64(dp99), "p99-ratio")
	fmt.Fprintf(os.Stderr, "DNS at %d new names/s, %d queries per mode (alternating windows of %d):\n", rate, len(direct), window)
	fmt.Fprintf(os.Stderr, "  direct   p50 %8v  p99 %8v\n", dp, dp99)
	fmt.Fprintf(os.Stderr, "  proxied  p50 %8v  p99 %8v  (ratio p50 %.2f, p99 %.2f)\n", pp, pp99, float64(pp)/float64(dp), float64(pp99)/float64(dp99))
	fmt.Fprintf(os.Stderr, "  added    p50 %8v  p99 %8v\n", pp-dp, pp99-dp99)
	fmt.Fprintf(os.Stderr, "  upstream exchange from the proxy p50 %v p99 %v\n", upp, upp99)
	fmt.Fprintf(os.Stderr, "  learn (cache + repository + datapath sync) p50 %v p99 %v; cache entries at the end %d, repository names %d, datapath syncs %d (incremental %d)\n",
		lp, lp99, entries, len(n.repo.FQDNs()), learner.syncCount.Load(), n.fqdnIncremental.Load())
}

// paced sends count queries at rate per second, each on its own
// goroutine (open loop: a slow answer does not slow the sender), and
// returns their latencies.
func paced(rate, count int, name func() string, addr string, failures *atomic.Int64) []time.Duration {
	out := make([]time.Duration, count)
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(rate)
	next := time.Now()
	for i := 0; i < count; i++ {
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		next = next.Add(interval)
		q := new(dns.Msg)
		q.SetQuestion(name(), dns.TypeA)
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
			s := time.Now()
			ans, _, err := c.Exchange(q, addr)
			out[i] = time.Since(s)
			if err != nil || ans.Rcode != dns.RcodeSuccess || len(ans.Answer) != 1 {
				failures.Add(1)
			}
		}(i)
	}
	wg.Wait()
	return out
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[(len(s)-1)*p/100]
}

func envInt(k string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(k)); err == nil && v > 0 {
		return v
	}
	return def
}

// benchServer is a real DNS server on loopback answering every name with
// its own address in 100.64.0.0/10 (a new name: a new address).
func benchServer(b *testing.B) netip.AddrPort {
	var next atomic.Uint32
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		i := next.Add(1)
		ip := net.IPv4(100, 64|byte(i>>16&0x3f), byte(i>>8), byte(i))
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: ip}}
		w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s := &dns.Server{PacketConn: pc, Handler: h}
	go s.ActivateAndServe()
	b.Cleanup(func() { s.Shutdown() })
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

// benchNode is the agent's node with a real datapath (own pins) and a
// repository holding a toFQDNs policy for a pod, without a sandbox.
func benchNode(b testing.TB, opts ...fqdn.Options) (*node, *fqdnLearner) {
	sfx := make([]byte, 4)
	rand.Read(sfx)
	pin := "/sys/fs/bpf/bulwark-bench-dns-" + hex.EncodeToString(sfx)
	b.Cleanup(func() { os.RemoveAll(pin) })
	dp, err := datapath.Open(datapath.Options{PinDir: pin, ConntrackGCInterval: -1})
	if err != nil {
		b.Fatalf("open datapath: %v", err)
	}
	b.Cleanup(func() { dp.Destroy() })
	repo := policy.NewRepository(policy.Options{})
	pol := &api.CiliumNetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: api.GroupVersion, Kind: api.KindCNP},
		ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: "fqdn"},
		Spec: &api.Rule{
			EndpointSelector: &api.EndpointSelector{LabelSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}},
			Egress: []api.EgressRule{{
				ToFQDNs: []api.FQDNSelector{{MatchPattern: "*.proxy.bench.test"}},
				ToPorts: []api.PortRule{{Ports: []api.PortProtocol{{Port: "443", Protocol: api.ProtoTCP}}}},
			}},
		},
	}
	if _, err := repo.Upsert(pol); err != nil {
		b.Fatal(err)
	}
	n := &node{
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), paths: Paths{StateDir: b.TempDir()},
		dp: dp, repo: repo, attached: map[uint32]string{}, loaded: map[uint32]bool{},
	}
	if err := n.syncTables(); err != nil {
		b.Fatal(err)
	}
	o := fqdn.Options{MaxNamesPerEndpoint: envInt("BULWARK_BENCH_DNS_MAX_NAMES", 0)}
	if len(opts) > 0 {
		o = opts[0]
	}
	return n, newFQDNLearner(n, o)
}

type staticPolicy struct{ st proxy.Stage }

func (s staticPolicy) PolicyFor(proxy.Flow) (proxy.Policy, bool) {
	return proxy.Policy{Stages: []proxy.Stage{s.st}}, true
}

// plainDialer dials the flow's destination from the proxy's own address
// (loopback: no transparent source needed to reach the bench server).
type plainDialer struct{}

func (plainDialer) DialUpstream(ctx context.Context, f proxy.Flow) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "udp4", f.Dst.String())
}

// timedUpstream records the proxy's upstream exchange times.
type timedUpstream struct {
	u  dnsproxy.Upstream
	mu sync.Mutex
	d  []time.Duration
}

func (t *timedUpstream) Exchange(ctx context.Context, f proxy.Flow, q *dns.Msg) (*dns.Msg, error) {
	s := time.Now()
	m, err := t.u.Exchange(ctx, f, q)
	t.mu.Lock()
	t.d = append(t.d, time.Since(s))
	t.mu.Unlock()
	return m, err
}
