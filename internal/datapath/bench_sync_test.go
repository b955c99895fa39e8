package datapath

import (
	"fmt"
	"maps"
	"net/netip"
	"runtime"
	"slices"
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
	sels := stableSelectors{}
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

// withEntry returns pol with one more ingress entry (a copy: the synced
// policy stays as it was).
func withEntry(pol *resolved.EndpointPolicy, e resolved.Entry) *resolved.EndpointPolicy {
	cp := *pol
	cp.Ingress.Entries = append(slices.Clip(pol.Ingress.Entries), e)
	return &cp
}

func withEndpoint(st State, id uint32, pol *resolved.EndpointPolicy) State {
	st.Endpoints = maps.Clone(st.Endpoints)
	st.Endpoints[id] = pol
	return st
}

// BenchmarkSyncScale loads 100k identities × 1k policies on 10 endpoints,
// then applies a one-policy change (one port range on one endpoint) and
// back, through a full Sync and through SyncChanges, and reports both and
// their ratio, and the map fill.
func BenchmarkSyncScale(b *testing.B) {
	dp := openTest(b, Sizes{})
	for ep := uint32(1); ep <= 10; ep++ {
		registerEndpoint(b, dp, Endpoint{ID: ep, IfIndex: 100 + int(ep)})
	}
	st := scaleState()
	start := time.Now()
	if err := dp.Sync(st); err != nil {
		b.Fatal(err)
	}
	initial := time.Since(start)
	pol := *st.Endpoints[1]
	pol.Ingress.Entries = slices.Clone(pol.Ingress.Entries)
	pol.Ingress.Entries[0].PortHi++ // one policy changes on one endpoint
	changed := withEndpoint(st, 1, &pol)
	one := Changes{Endpoints: []uint32{1}}
	var full, incr time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, s := range []State{changed, st} {
			start := time.Now()
			if err := dp.Sync(s); err != nil {
				b.Fatal(err)
			}
			full += time.Since(start)
		}
		for _, s := range []State{changed, st} {
			start := time.Now()
			if err := dp.SyncChanges(s, one); err != nil {
				b.Fatal(err)
			}
			incr += time.Since(start)
		}
	}
	b.StopTimer()
	n := float64(2 * b.N)
	b.ReportMetric(initial.Seconds(), "s/initial-load")
	b.ReportMetric(full.Seconds()/n, "s/full-sync")
	b.ReportMetric(incr.Seconds()/n, "s/one-change-sync")
	b.ReportMetric(float64(full)/float64(incr), "full/incremental")
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

// BenchmarkSyncLatency measures, on the 100k identities × 1k policies
// state, the time from a change to its maps written (SyncChanges) for
// three kinds of change, b.N of each, and reports p50/p99 per kind and
// the heap in use: one rule added to one policy (one endpoint's table),
// one new policy selecting the 10 endpoints with a new peer selector of
// 100 identities, and one identity moving (a pod's labels change: its
// address gets a new identity, in another selector). Run with
// -benchtime 200x for a meaningful p99. The first change of an endpoint's
// tables writes its whole inactive buffer: BenchmarkSyncScale includes it,
// this one measures after a warm-up.
func BenchmarkSyncLatency(b *testing.B) {
	dp := openTest(b, Sizes{})
	for ep := uint32(1); ep <= 10; ep++ {
		registerEndpoint(b, dp, Endpoint{ID: ep, IfIndex: 100 + int(ep)})
	}
	st := scaleState()
	if err := dp.Sync(st); err != nil {
		b.Fatal(err)
	}
	const nSel, all = 1000, resolved.SelectorID(1001)
	allEPs := []uint32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	var rule, policy, move []time.Duration
	timed := func(out *[]time.Duration, s State, ch Changes) {
		start := time.Now()
		if err := dp.SyncChanges(s, ch); err != nil {
			b.Fatal(err)
		}
		*out = append(*out, time.Since(start))
		st = s
	}
	// Warm-up: every endpoint's tables change twice, so both its buffers
	// hold tables (as in an agent that has run for a while: the first
	// change of an endpoint writes its whole inactive buffer).
	for i := range 2 {
		s := st
		s.Endpoints = maps.Clone(st.Endpoints)
		for _, ep := range allEPs {
			s.Endpoints[ep] = withEntry(st.Endpoints[ep], resolved.Entry{Peer: 1, Proto: resolved.ProtoUDP,
				PortLo: uint16(9000 + i), PortHi: uint16(9000 + i), Verdict: resolved.Allow, Origin: ref("warm-up")})
		}
		if err := dp.SyncChanges(s, Changes{Endpoints: allEPs}); err != nil {
			b.Fatal(err)
		}
		st = s
	}
	runtime.GC() // the setup's garbage is not a change's cost
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// One rule added to one policy.
		ep := uint32(1 + i%10)
		s := withEndpoint(st, ep, withEntry(st.Endpoints[ep], resolved.Entry{Peer: resolved.SelectorID(1 + i%nSel),
			Proto: resolved.ProtoTCP, PortLo: uint16(20000 + i), PortHi: uint16(20000 + i), Verdict: resolved.Allow, Origin: ref(fmt.Sprint("policy-", 1+i%nSel))}))
		timed(&rule, s, Changes{Endpoints: []uint32{ep}})

		// One new policy selecting 10 endpoints, its peers a new selector.
		b.StopTimer()
		sel := resolved.SelectorID(5000 + i)
		sels := maps.Clone(st.Selectors.(stableSelectors))
		for j := range 100 {
			sels[sel] = append(sels[sel], identity.NumericIdentity(256+(i*100+j)%100000))
		}
		slices.Sort(sels[sel])
		s = st
		s.Selectors = sels
		s.Endpoints = maps.Clone(st.Endpoints)
		for _, ep := range allEPs {
			s.Endpoints[ep] = withEntry(st.Endpoints[ep], resolved.Entry{Peer: sel, Proto: resolved.ProtoTCP,
				PortLo: 443, PortHi: 443, Verdict: resolved.Allow, Origin: ref(fmt.Sprint("new-policy-", i))})
		}
		b.StartTimer()
		timed(&policy, s, Changes{Endpoints: allEPs})

		// One identity moves: its address gets a new identity, which is
		// in another selector (and in the cluster-wide one).
		b.StopTimer()
		k := (i * 7919) % 100000
		old, nid := identity.NumericIdentity(256+k), identity.NumericIdentity(200000+i)
		prefix := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(k >> 16), byte(k >> 8), byte(k)}), 32)
		if st.IPCache[prefix] != old {
			b.Fatalf("address %s is not identity %d", prefix, old)
		}
		s = st
		s.IPCache = st.IPCache // SyncChanges reads only the listed prefix
		s.IPCache[prefix] = nid
		sels = maps.Clone(st.Selectors.(stableSelectors))
		from, to := resolved.SelectorID(1+k%nSel), resolved.SelectorID(1+(k+1)%nSel)
		drop := func(l []identity.NumericIdentity) []identity.NumericIdentity {
			return slices.DeleteFunc(slices.Clone(l), func(x identity.NumericIdentity) bool { return x == old })
		}
		sels[from] = drop(sels[from])
		sels[to] = append(slices.Clip(sels[to]), nid) // nid is the largest: sorted
		sels[all] = append(drop(sels[all]), nid)
		s.Selectors = sels
		b.StartTimer()
		timed(&move, s, Changes{IPCache: []netip.Prefix{prefix}})
	}
	b.StopTimer()
	for _, m := range []struct {
		name string
		d    []time.Duration
	}{{"one-rule", rule}, {"policy-10-endpoints", policy}, {"identity-move", move}} {
		slices.Sort(m.d)
		pct := func(p float64) float64 {
			return float64(m.d[min(len(m.d)-1, int(p*float64(len(m.d))))].Microseconds()) / 1000
		}
		b.ReportMetric(pct(0.50), "ms-p50/"+m.name)
		b.ReportMetric(pct(0.99), "ms-p99/"+m.name)
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "MiB-heap")
}
