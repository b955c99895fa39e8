package dns

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

func TestAnswer(t *testing.T) {
	file := filepath.Join(t.TempDir(), "records.json")
	if err := WriteRecords(file, Records{Names: map[string][]netip.Addr{
		"backend.demo.svc.cluster.local": {netip.MustParseAddr("10.96.0.20")},
		"API.github.com.":                {netip.MustParseAddr("198.18.0.10"), netip.MustParseAddr("fd00::10")},
		"exact.test.example":             {netip.MustParseAddr("198.18.0.12")},
	}, Zones: map[string][]netip.Addr{
		"Test.Example": {netip.MustParseAddr("198.18.0.11")},
	}}); err != nil {
		t.Fatal(err)
	}
	s := NewServer(file)
	cases := []struct {
		name  string
		qtype uint16
		rcode int
		want  []string
	}{
		{"backend.demo.svc.cluster.local.", mdns.TypeA, mdns.RcodeSuccess, []string{"10.96.0.20"}},
		{"BACKEND.demo.svc.cluster.local.", mdns.TypeA, mdns.RcodeSuccess, []string{"10.96.0.20"}},
		{"backend.demo.svc.cluster.local.", mdns.TypeAAAA, mdns.RcodeSuccess, nil},
		{"api.github.com.", mdns.TypeAAAA, mdns.RcodeSuccess, []string{"fd00::10"}},
		{"backend.", mdns.TypeA, mdns.RcodeNameError, nil},
		{"example.com.", mdns.TypeA, mdns.RcodeNameError, nil},
		// a wildcard zone: any name under it, at any depth, not the zone itself
		{"a.test.example.", mdns.TypeA, mdns.RcodeSuccess, []string{"198.18.0.11"}},
		{"x.y.Test.example.", mdns.TypeA, mdns.RcodeSuccess, []string{"198.18.0.11"}},
		{"exact.test.example.", mdns.TypeA, mdns.RcodeSuccess, []string{"198.18.0.12"}},
		{"test.example.", mdns.TypeA, mdns.RcodeNameError, nil},
		{"atest.example.", mdns.TypeA, mdns.RcodeNameError, nil},
	}
	for _, c := range cases {
		req := new(mdns.Msg)
		req.SetQuestion(c.name, c.qtype)
		resp := s.Answer(req)
		if resp.Rcode != c.rcode {
			t.Errorf("%s/%d: rcode %d, want %d", c.name, c.qtype, resp.Rcode, c.rcode)
		}
		var got []string
		for _, rr := range resp.Answer {
			switch r := rr.(type) {
			case *mdns.A:
				got = append(got, r.A.String())
			case *mdns.AAAA:
				got = append(got, r.AAAA.String())
			}
		}
		if len(got) != len(c.want) || (len(got) > 0 && got[0] != c.want[0]) {
			t.Errorf("%s/%d: answers %v, want %v", c.name, c.qtype, got, c.want)
		}
	}
}

func TestServeReloads(t *testing.T) {
	file := filepath.Join(t.TempDir(), "records.json")
	s := NewServer(file)
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, udp, tcp, 10*time.Millisecond) }()
	t.Cleanup(func() { cancel(); <-done })

	query := func(network, addr string) *mdns.Msg {
		c := &mdns.Client{Net: network}
		m := new(mdns.Msg)
		m.SetQuestion("db.demo.svc.cluster.local.", mdns.TypeA)
		r, _, err := c.Exchange(m, addr)
		if err != nil {
			t.Fatalf("%s query: %v", network, err)
		}
		return r
	}
	if r := query("udp", udp.LocalAddr().String()); r.Rcode != mdns.RcodeNameError {
		t.Fatalf("before records: rcode %d", r.Rcode)
	}
	if err := WriteRecords(file, Records{Names: map[string][]netip.Addr{
		ServiceName("db", "demo", "cluster.local"): {netip.MustParseAddr("10.96.0.30")},
	}}); err != nil {
		t.Fatal(err)
	}
	// The very next query sees the new records.
	if r := query("tcp", tcp.Addr().String()); r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("after WriteRecords: %v", r)
	}
}
