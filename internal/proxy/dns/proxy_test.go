package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/proxy"
)

// server is a real miekg/dns server on loopback (UDP and TCP on the same
// port) answering a small zone; it remembers the sources it saw.
type server struct {
	addr    netip.AddrPort
	mu      sync.Mutex
	sources []netip.Addr
}

var zone = map[string][]string{
	"api.github.com.":     {"198.18.0.10"},
	"s3.amazonaws.com.":   {"198.18.0.11", "198.18.0.12"},
	"deep.a.example.com.": {"198.18.0.13"},
	"evil.example.org.":   {"198.18.0.66"},
}

func startServer(t *testing.T) *server {
	t.Helper()
	s := &server{}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		ap := netip.MustParseAddrPort(w.RemoteAddr().String())
		s.mu.Lock()
		s.sources = append(s.sources, ap.Addr())
		s.mu.Unlock()
		m := new(dns.Msg)
		m.SetReply(q)
		name := strings.ToLower(q.Question[0].Name)
		switch {
		case name == "cname.example.com.":
			m.Answer = append(m.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 300}, Target: "api.github.com."})
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "api.github.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30}, A: net.ParseIP("198.18.0.10")})
		case name == "big.example.com.":
			for i := 1; i <= 60; i++ {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(198, 18, 1, byte(i))})
			}
		case zone[name] != nil:
			for i, ip := range zone[name] {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: uint32(60 - i)}, A: net.ParseIP(ip)})
			}
		default:
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	ln, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		pc.Close()
		t.Skipf("TCP port %d taken: %v", port, err)
	}
	us := &dns.Server{PacketConn: pc, Handler: h}
	ts := &dns.Server{Listener: ln, Handler: h}
	go us.ActivateAndServe()
	go ts.ActivateAndServe()
	t.Cleanup(func() { us.Shutdown(); ts.Shutdown() })
	s.addr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	return s
}

func (s *server) sawSources() []netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]netip.Addr(nil), s.sources...)
}

// loopbackDialer dials the flow's destination from the flow's source
// address (a loopback address here), as the transparent dialer does.
type loopbackDialer struct{}

func (loopbackDialer) DialUpstream(ctx context.Context, f proxy.Flow) (net.Conn, error) {
	network := "udp4"
	var local net.Addr = &net.UDPAddr{IP: f.Src.Addr().AsSlice()}
	if f.Protocol == resolved.ProtoTCP {
		network = "tcp4"
		local = &net.TCPAddr{IP: f.Src.Addr().AsSlice()}
	}
	d := net.Dialer{LocalAddr: local}
	return d.DialContext(ctx, network, f.Dst.String())
}

// policies gives every flow the same stages.
type policies struct{ stages []proxy.Stage }

func (p policies) PolicyFor(proxy.Flow) (proxy.Policy, bool) {
	if p.stages == nil {
		return proxy.Policy{}, false
	}
	return proxy.Policy{Stages: p.stages}, true
}

func egress(rules ...resolved.DNSRule) proxy.Stage {
	return proxy.Stage{EndpointID: 7, Direction: resolved.Egress, Rules: &resolved.L7Rules{DNS: rules}, Policies: []string{"demo/dns"}}
}

type recorder struct {
	mu  sync.Mutex
	rec []proxy.Record
}

func (r *recorder) add(x proxy.Record) { r.mu.Lock(); r.rec = append(r.rec, x); r.mu.Unlock() }
func (r *recorder) all() []proxy.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]proxy.Record(nil), r.rec...)
}

// front is the proxy listening on loopback, every client flow redirected
// from the real server's address.
type front struct {
	udp, tcp string
	rec      *recorder
	learned  chan Answer
	reg      *prometheus.Registry
}

type frontOptions struct {
	stages  []proxy.Stage
	learn   LearnFunc
	denied  int
	srvAddr netip.AddrPort
}

func startFront(t *testing.T, o frontOptions) *front {
	t.Helper()
	fr := &front{rec: &recorder{}, learned: make(chan Answer, 100), reg: prometheus.NewRegistry()}
	met, err := NewMetrics(fr.reg)
	if err != nil {
		t.Fatal(err)
	}
	learn := o.learn
	if learn == nil {
		learn = func(_ context.Context, _ proxy.Flow, eps []uint32, a Answer) error {
			fr.learned <- a
			return nil
		}
	}
	p, err := New(Options{Policies: policies{o.stages}, Upstream: DialerUpstream{loopbackDialer{}}, Learn: learn, Record: fr.rec.add, DeniedRcode: o.denied, Metrics: met})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); pc.Close(); ln.Close() })
	flow := func(src net.Addr, proto resolved.Protocol) proxy.Flow {
		return proxy.Flow{Src: netip.MustParseAddrPort(src.String()), Dst: o.srvAddr, Protocol: proto, SrcIdentity: 1000, DstIdentity: 2}
	}
	go p.ServeUDP(ctx, pc, func(src net.Addr) (proxy.Flow, bool) { return flow(src, resolved.ProtoUDP), true })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.ServeConn(ctx, c, flow(c.RemoteAddr(), resolved.ProtoTCP))
		}
	}()
	fr.udp, fr.tcp = pc.LocalAddr().String(), ln.Addr().String()
	return fr
}

// query asks the front from 127.0.0.2 (the "pod").
func (fr *front) query(t *testing.T, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	addr := fr.udp
	if network == "tcp" {
		addr = fr.tcp
		c.Dialer = &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	} else {
		c.Dialer = &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	}
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	ans, _, err := c.Exchange(q, addr)
	if err != nil {
		t.Fatalf("query %s over %s: %v", name, network, err)
	}
	return ans
}

func ips(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

func TestAllowedForwardedAndLearned(t *testing.T) {
	srv := startServer(t)
	fr := startFront(t, frontOptions{srvAddr: srv.addr, stages: []proxy.Stage{egress(resolved.DNSRule{MatchName: "api.github.com"}, resolved.DNSRule{MatchPattern: "*.amazonaws.com"})}})
	for _, network := range []string{"udp", "tcp"} {
		ans := fr.query(t, network, "API.GitHub.com.", dns.TypeA)
		if ans.Rcode != dns.RcodeSuccess || len(ips(ans)) != 1 || ips(ans)[0] != "198.18.0.10" {
			t.Fatalf("%s: answer %v", network, ans)
		}
		a := <-fr.learned
		if a.Name != "api.github.com." || len(a.IPs) != 1 || a.IPs[0] != netip.MustParseAddr("198.18.0.10") || a.TTL != 60 {
			t.Fatalf("%s: learned %+v", network, a)
		}
	}
	ans := fr.query(t, "udp", "s3.amazonaws.com.", dns.TypeA)
	if len(ips(ans)) != 2 {
		t.Fatalf("answer %v", ans)
	}
	if a := <-fr.learned; len(a.IPs) != 2 || a.TTL != 59 {
		t.Fatalf("learned %+v: want 2 addresses, the smaller TTL", a)
	}
	// The server saw the pod's address, never the proxy's.
	for _, src := range srv.sawSources() {
		if src != netip.MustParseAddr("127.0.0.2") {
			t.Fatalf("server saw source %s, want the client's 127.0.0.2", src)
		}
	}
	// Records: a forwarded request and a response with rcode, IPs and TTL.
	var req, resp int
	for _, r := range fr.rec.all() {
		if r.Verdict != proxy.Forwarded || r.DNS == nil || len(r.Policies) != 1 || r.Policies[0] != "demo/dns" {
			t.Fatalf("record %+v", r)
		}
		switch r.Type {
		case proxy.Request:
			req++
		case proxy.Response:
			resp++
			if len(r.DNS.IPs) == 0 || r.DNS.TTL == 0 || r.DNS.RCode != dns.RcodeSuccess || r.DNS.QTypes[0] != "A" {
				t.Fatalf("response record %+v", r.DNS)
			}
		}
	}
	if req != 3 || resp != 3 {
		t.Fatalf("%d request and %d response records, want 3 and 3", req, resp)
	}
	if got := counter(t, fr, "forwarded"); got != 3 {
		t.Fatalf("forwarded counter %v", got)
	}
}

func counter(t *testing.T, fr *front, verdict string) float64 {
	t.Helper()
	mfs, err := fr.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "bulwark_dns_proxy_requests_total" {
			continue
		}
		for _, m := range mf.Metric {
			if m.Label[0].GetValue() == verdict {
				return m.Counter.GetValue()
			}
		}
	}
	return 0
}

func TestDeniedRefused(t *testing.T) {
	srv := startServer(t)
	for _, c := range []struct {
		denied, want int
	}{{0, dns.RcodeRefused}, {dns.RcodeNameError, dns.RcodeNameError}} {
		fr := startFront(t, frontOptions{srvAddr: srv.addr, denied: c.denied, stages: []proxy.Stage{egress(resolved.DNSRule{MatchName: "api.github.com"})}})
		before := len(srv.sawSources())
		for _, network := range []string{"udp", "tcp"} {
			ans := fr.query(t, network, "evil.example.org.", dns.TypeA)
			if ans.Rcode != c.want || len(ans.Answer) != 0 {
				t.Fatalf("%s: denied query answered %v", network, ans)
			}
		}
		if len(srv.sawSources()) != before {
			t.Fatal("a denied query reached the server")
		}
		select {
		case a := <-fr.learned:
			t.Fatalf("denied query learned %+v", a)
		default:
		}
		recs := fr.rec.all()
		if len(recs) != 2 {
			t.Fatalf("records %+v", recs)
		}
		for _, r := range recs {
			if r.Verdict != proxy.Dropped || r.Type != proxy.Request || r.DNS.Query != "evil.example.org." || r.DNS.RCode != c.want || r.Reason == "" {
				t.Fatalf("record %+v %+v", r, r.DNS)
			}
		}
		if got := counter(t, fr, "denied"); got != 2 {
			t.Fatalf("denied counter %v", got)
		}
	}
}

func TestEveryStageMustAllow(t *testing.T) {
	srv := startServer(t)
	cases := []struct {
		name   string
		stages []proxy.Stage
		query  string
		want   int
	}{
		{"no policy any more", nil, "api.github.com.", dns.RcodeRefused},
		{"stage without DNS rules", []proxy.Stage{{EndpointID: 7, Direction: resolved.Egress, Rules: &resolved.L7Rules{HTTP: []resolved.HTTPRule{{Path: "/"}}}}}, "api.github.com.", dns.RcodeRefused},
		{"ingress denies", []proxy.Stage{egress(resolved.DNSRule{MatchPattern: "*"}), {EndpointID: 9, Direction: resolved.Ingress, Rules: &resolved.L7Rules{DNS: []resolved.DNSRule{{MatchName: "other.com"}}}}}, "api.github.com.", dns.RcodeRefused},
		{"both allow", []proxy.Stage{egress(resolved.DNSRule{MatchPattern: "*"}), {EndpointID: 9, Direction: resolved.Ingress, Rules: &resolved.L7Rules{DNS: []resolved.DNSRule{{MatchPattern: "*.github.com"}}}}}, "api.github.com.", dns.RcodeSuccess},
		{"any depth", []proxy.Stage{egress(resolved.DNSRule{MatchPattern: "**.example.com"})}, "deep.a.example.com.", dns.RcodeSuccess},
		{"one label only", []proxy.Stage{egress(resolved.DNSRule{MatchPattern: "*.example.com"})}, "deep.a.example.com.", dns.RcodeRefused},
		{"allowed NXDOMAIN passes", []proxy.Stage{egress(resolved.DNSRule{MatchPattern: "*"})}, "nothing.example.net.", dns.RcodeNameError},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fr := startFront(t, frontOptions{srvAddr: srv.addr, stages: c.stages})
			if ans := fr.query(t, "udp", c.query, dns.TypeA); ans.Rcode != c.want {
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[ans.Rcode], dns.RcodeToString[c.want])
			}
		})
	}
}

// The answer is released only after Learn returned: the pod's first
// connection finds its addresses allowed.
func TestLearnBeforeRelease(t *testing.T) {
	srv := startServer(t)
	var learned atomic.Bool
	gate := make(chan struct{})
	entered := make(chan struct{})
	fr := startFront(t, frontOptions{srvAddr: srv.addr, stages: []proxy.Stage{egress(resolved.DNSRule{MatchName: "api.github.com"})},
		learn: func(ctx context.Context, f proxy.Flow, eps []uint32, a Answer) error {
			if len(eps) != 1 || eps[0] != 7 {
				return fmt.Errorf("learners %v", eps)
			}
			close(entered)
			<-gate
			learned.Store(true)
			return nil
		}})
	done := make(chan *dns.Msg)
	go func() { done <- fr.query(t, "udp", "api.github.com.", dns.TypeA) }()
	<-entered
	go func() { time.Sleep(50 * time.Millisecond); close(gate) }()
	ans := <-done
	if !learned.Load() {
		t.Fatal("the answer reached the client before Learn returned")
	}
	if len(ips(ans)) != 1 {
		t.Fatalf("answer %v", ans)
	}
}

func TestLearnFailureFailsClosed(t *testing.T) {
	srv := startServer(t)
	fr := startFront(t, frontOptions{srvAddr: srv.addr, stages: []proxy.Stage{egress(resolved.DNSRule{MatchName: "api.github.com"})},
		learn: func(context.Context, proxy.Flow, []uint32, Answer) error { return errors.New("datapath full") }})
	ans := fr.query(t, "udp", "api.github.com.", dns.TypeA)
	if ans.Rcode != dns.RcodeServerFailure || len(ans.Answer) != 0 {
		t.Fatalf("answer %v", ans)
	}
	var sawErr bool
	for _, r := range fr.rec.all() {
		sawErr = sawErr || (r.Type == proxy.Response && r.Verdict == proxy.Error)
	}
	if !sawErr {
		t.Fatal("no error record")
	}
}

func TestUpstreamDown(t *testing.T) {
	// A port nothing listens on: the ICMP port-unreachable fails the read.
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := netip.MustParseAddrPort(pc.LocalAddr().String())
	pc.Close()
	fr := startFront(t, frontOptions{srvAddr: dead, stages: []proxy.Stage{egress(resolved.DNSRule{MatchPattern: "*"})}})
	if ans := fr.query(t, "udp", "api.github.com.", dns.TypeA); ans.Rcode != dns.RcodeServerFailure {
		t.Fatalf("answer %v", ans)
	}
}

// A UDP answer too large for the client is truncated (TC); over TCP the
// client gets all of it, and every address is learned either way.
func TestTruncation(t *testing.T) {
	srv := startServer(t)
	fr := startFront(t, frontOptions{srvAddr: srv.addr, stages: []proxy.Stage{egress(resolved.DNSRule{MatchPattern: "*.example.com"})}})
	ans := fr.query(t, "udp", "big.example.com.", dns.TypeA)
	if !ans.Truncated || len(ans.Answer) >= 60 {
		t.Fatalf("UDP answer: truncated %v, %d records", ans.Truncated, len(ans.Answer))
	}
	<-fr.learned
	ans = fr.query(t, "tcp", "big.example.com.", dns.TypeA)
	if ans.Truncated || len(ans.Answer) != 60 {
		t.Fatalf("TCP answer: truncated %v, %d records", ans.Truncated, len(ans.Answer))
	}
	if a := <-fr.learned; len(a.IPs) != 60 {
		t.Fatalf("learned %d addresses", len(a.IPs))
	}
}

func TestCNAMEChainLearnedUnderQueryName(t *testing.T) {
	srv := startServer(t)
	fr := startFront(t, frontOptions{srvAddr: srv.addr, stages: []proxy.Stage{egress(resolved.DNSRule{MatchName: "cname.example.com"})}})
	fr.query(t, "udp", "cname.example.com.", dns.TypeA)
	if a := <-fr.learned; a.Name != "cname.example.com." || len(a.IPs) != 1 || a.TTL != 30 {
		t.Fatalf("learned %+v", a)
	}
}
