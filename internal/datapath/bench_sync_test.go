package datapath

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// scaleState: 100k identities (each with an ipcache entry), 1000 peer
// selectors of 100 identities each plus one matching every identity, and
// 10 endpoints whose tables hold 1000 policies' entries (one per selector,
// a port range each, a deny every tenth, the cluster-wide selector on 53).
func scaleState() State {
	const nIDs, nSel, nEP = 100000, 1000, 10
	sels := fixtureSelectors{}
	ipc := make(map[netip.Prefix]identity.NumericIdentity, nIDs)
	all := resolved.SelectorID(nSel + 1)
	for i := 0; i < nIDs; i++ {
		id := identity.NumericIdentity(256 + i)
		sel := resolved.SelectorID(1 + i%nSel)
		sels[sel] = append(sels[sel], id)
		sels[all] = append(sels[all], id)
		ipc[netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)] = id
	}
	eps := map[uint32]*resolved.EndpointPolicy{}
	for ep := 1; ep <= nEP; ep++ {
		pol := &resolved.EndpointPolicy{Identity: identity.NumericIdentity(256 + ep), Ingress: resolved.DirectionPolicy{Enforced: true}}
		for s := 1; s <= nSel; s++ {
			v := resolved.Allow
			if s%10 == 0 {
				v = resolved.Deny
			}
			lo := uint16(1000 + s)
			pol.Ingress.Entries = append(pol.Ingress.Entries, resolved.Entry{Peer: resolved.SelectorID(s), Proto: resolved.ProtoTCP,
				PortLo: lo, PortHi: lo + 7, Verdict: v, Origin: ref(fmt.Sprint("policy-", s))})
		}
		pol.Ingress.Entries = append(pol.Ingress.Entries, resolved.Entry{Peer: all, Proto: resolved.ProtoUDP, PortLo: 53, PortHi: 53, Verdict: resolved.Allow, Origin: ref("dns")})
		eps[uint32(ep)] = pol
	}
	return State{Endpoints: eps, Selectors: sels, IPCache: ipc}
}

// BenchmarkSyncScale loads 100k identities × 1k policies on 10 endpoints,
// then applies a one-policy change, and reports the map fill.
func BenchmarkSyncScale(b *testing.B) {
	dp := openTest(b, Sizes{})
	for ep := uint32(1); ep <= 10; ep++ {
		registerEndpoint(b, dp, Endpoint{ID: ep, IfIndex: 100 + int(ep)})
	}
	st := scaleState()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if err := dp.Sync(st); err != nil {
			b.Fatal(err)
		}
		full := time.Since(start)
		pol := st.Endpoints[1]
		pol.Ingress.Entries[0].PortHi++ // one policy changes on one endpoint
		start = time.Now()
		if err := dp.Sync(st); err != nil {
			b.Fatal(err)
		}
		incr := time.Since(start)
		pol.Ingress.Entries[0].PortHi--
		b.ReportMetric(full.Seconds(), "s/full-sync")
		b.ReportMetric(incr.Seconds(), "s/one-change-sync")
	}
	p := dp.MapPressure()
	b.ReportMetric(p["policy"]*float64(dp.sizes.Policy), "policy-entries")
	b.ReportMetric(p["id_selectors"]*float64(dp.sizes.IdentitySelectors), "identity-lists")
	for _, d := range dp.Endpoints() {
		dump, err := dp.DumpEndpoint(d.ID)
		if err != nil || dump.Overflow || !dump.Ready {
			b.Fatalf("endpoint %d: overflow=%v ready=%v err=%v", d.ID, dump.Overflow, dump.Ready, err)
		}
	}
}
