package datapath

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// benchState builds an ingress table of n entries: n/100 selectors (at
// least 1) with distinct single-port allows; the benchmark peer belongs to
// up to 16 of the selectors, and the ipcache holds n+1 prefixes.
func benchState(n int) (State, netip.Addr) {
	nsel := max(1, n/100)
	perSel := n / nsel
	sels := fixtureSelectors{}
	pol := &resolved.EndpointPolicy{Identity: idPod, Ingress: resolved.DirectionPolicy{Enforced: true}}
	peer := identity.NumericIdentity(100000)
	ipc := map[netip.Prefix]identity.NumericIdentity{}
	for s := 0; s < nsel; s++ {
		sel := resolved.SelectorID(s + 1)
		member := identity.NumericIdentity(1000 + s)
		sels[sel] = []identity.NumericIdentity{member}
		if s < 16 {
			sels[sel] = append(sels[sel], peer)
		}
		for i := 0; i < perSel; i++ {
			port := uint16(1000 + i)
			pol.Ingress.Entries = append(pol.Ingress.Entries, resolved.Entry{Peer: sel, Proto: resolved.ProtoTCP, PortLo: port, PortHi: port, Verdict: resolved.Allow, Origin: ref(fmt.Sprint("p", s))})
		}
	}
	for i := 0; i < n; i++ {
		a := netip.AddrFrom4([4]byte{10, byte(100 + i>>16), byte(i >> 8), byte(i)})
		ipc[netip.PrefixFrom(a, 32)] = identity.NumericIdentity(1000 + i%nsel)
	}
	peerAddr := netip.MustParseAddr("10.99.0.1")
	ipc[netip.PrefixFrom(peerAddr, 32)] = peer
	return State{Endpoints: map[uint32]*resolved.EndpointPolicy{testEP: pol}, Selectors: sels, IPCache: ipc}, peerAddr
}

// BenchmarkProgRun reports ns per packet through BPF_PROG_TEST_RUN for an
// established flow (conntrack hit) and for a new flow that scans every
// selector of its peer and misses (the policy path's worst case), with 1,
// 1k and 100k policy entries. baseline-arp-pass is the floor: parse and
// pass, no map lookup.
func BenchmarkProgRun(b *testing.B) {
	for _, n := range []int{1, 1000, 100000} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			dp := openTest(b, Sizes{Policy: 262144, IPCache: 262144})
			registerEndpoint(b, dp, Endpoint{ID: testEP, IfIndex: 1, Identity: idPod})
			st, peer := benchState(n)
			if err := dp.Sync(st); err != nil {
				b.Fatal(err)
			}
			allowed := packet{src: peer, dst: podAddr, proto: resolved.ProtoTCP, sport: 40000, dport: 1000, tcpFlags: 0x10}
			if run(b, dp, resolved.Ingress, allowed) != tcActOK {
				b.Fatal("allowed packet dropped")
			}
			missed := packet{src: peer, dst: podAddr, proto: resolved.ProtoTCP, sport: 40001, dport: 999, tcpFlags: 0x02}
			for _, c := range []struct {
				name string
				p    packet
			}{{"baseline-arp-pass", packet{ethType: 0x0806}}, {"established", allowed}, {"new-flow-policy-scan", missed}} {
				b.Run(c.name, func(b *testing.B) {
					frame := c.p.frame()
					prog := dp.objs.BulwarkToPod
					b.ResetTimer()
					_, d, err := prog.Benchmark(frame, b.N, nil)
					if err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(float64(d.Nanoseconds()), "ns/pkt")
				})
			}
		})
	}
}
