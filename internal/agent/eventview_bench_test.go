package agent

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/metrics"
	"github.com/bulwark-net/bulwark/internal/observer"
	"github.com/bulwark-net/bulwark/internal/policy/policytest"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// benchViewSize is a node's worth of cluster: a few hundred pods and
// policies.
var benchViewSize = policytest.Size{Namespaces: 10, LabelSets: 100, Pods: 400, Policies: 300}

// fixedResolver answers every question with a constant, doing no lookup:
// the cheap resolver internal/metrics benchmarks the event path with, the
// baseline the agent's resolver is compared with.
type fixedResolver struct{}

var (
	fixedInfo   = observer.EndpointInfo{ID: 5, Identity: 300, Namespace: "demo", PodName: "db-0"}
	fixedDeny   = []resolved.PolicyRef{{Kind: "CiliumClusterwideNetworkPolicy", Name: "deny-world"}}
	fixedSelect = []resolved.PolicyRef{{Kind: "NetworkPolicy", Namespace: "demo", Name: "default-deny"}}
)

func (fixedResolver) EndpointByID(uint32) (observer.EndpointInfo, bool) { return fixedInfo, true }
func (fixedResolver) EndpointByIP(netip.Addr) (observer.EndpointInfo, bool) {
	return observer.EndpointInfo{}, false
}
func (fixedResolver) IdentityLabels(identity.NumericIdentity) []string { return nil }
func (fixedResolver) RulePolicies(uint32) []resolved.PolicyRef         { return fixedDeny }
func (fixedResolver) SelectingPolicies(uint32, resolved.Direction) []resolved.PolicyRef {
	return fixedSelect
}

// benchViewEvents is a mix of traffic between the fixture's pods: 70%
// allowed new connections (ingress, a real rule id), 10% egress drops by a
// rule, 20% default-deny ingress drops; one source in eight is outside the
// cluster (resolved by identity labels, not by pod).
func benchViewEvents(tb testing.TB, f *viewFixture) []event.Event {
	type local struct {
		id   uint32
		ip   netip.Addr
		iden identity.NumericIdentity
	}
	var pods []local
	f.n.mu.Lock()
	for id, key := range f.n.attached {
		ns, name := splitKey(key)
		ep := f.n.snap.Endpoints[endpointKeyOf(ns, name)]
		if ep != nil && ep.IP.IsValid() {
			pods = append(pods, local{id, ep.IP, ep.Identity})
		}
	}
	f.n.mu.Unlock()
	slices.SortFunc(pods, func(a, b local) int { return int(a.id) - int(b.id) })
	var rules []uint32
	for id := range f.rules {
		rules = append(rules, id)
	}
	slices.Sort(rules)
	if len(pods) < 2 || len(rules) == 0 {
		tb.Fatalf("fixture has %d pods, %d rules", len(pods), len(rules))
	}
	evs := make([]event.Event, 0, 512)
	for i := 0; i < cap(evs); i++ {
		src, dst := pods[(i*7)%len(pods)], pods[(i*13+1)%len(pods)]
		ev := event.Event{
			Type: event.TypePolicyVerdict, Verdict: event.Forwarded, Direction: resolved.Ingress,
			EndpointID: dst.id, Src: src.ip, Dst: dst.ip, SrcIdentity: src.iden, DstIdentity: dst.iden,
			Proto: resolved.ProtoTCP, SrcPort: uint16(30000 + i), DstPort: 8080, TCPFlags: 0x02, Bytes: 60,
			RuleID: rules[i%len(rules)],
		}
		if i%8 == 3 {
			ev.Src = netip.AddrFrom4([4]byte{192, 0, 2, byte(i)})
			ev.SrcIdentity = identity.WorldIPv4
		}
		switch i % 10 {
		case 7:
			ev.Type, ev.Verdict, ev.Reason, ev.Direction = event.TypeDrop, event.Dropped, event.ReasonPolicyDenyRule, resolved.Egress
			ev.EndpointID = src.id
			ev.Src, ev.SrcIdentity = src.ip, src.iden
		case 8, 9:
			ev.Type, ev.Verdict, ev.Reason, ev.RuleID = event.TypeDrop, event.Dropped, event.ReasonPolicyDenied, 0
		}
		evs = append(evs, ev)
	}
	return evs
}

// BenchmarkAgentEventPath drives event → flow → ring → metrics (with a
// follower nobody reads, as BenchmarkEventPath in internal/metrics) over
// a few hundred pods and policies, with three resolvers:
//
//   - fixed: constant answers, no lookup (the baseline);
//   - agent: the agent's resolver over its published view;
//   - direct: the same answers computed per call under the node's lock
//     with fresh label strings (the agent before views).
//
// Compare events/s of agent and direct with fixed:
//
//	go test ./internal/agent/ -run XXX -bench AgentEventPath -cpu 2
func BenchmarkAgentEventPath(b *testing.B) {
	f := newViewFixture(b, benchViewSize)
	evs := benchViewEvents(b, f)
	for _, c := range []struct {
		name string
		r    observer.Resolver
	}{
		{"resolver=fixed", fixedResolver{}},
		{"resolver=agent", resolver{f.n}},
		{"resolver=direct", f.direct()},
	} {
		b.Run(c.name, func(b *testing.B) {
			m, err := metrics.New(metrics.Options{CiliumCompat: true})
			if err != nil {
				b.Fatal(err)
			}
			o, err := observer.New(observer.Options{NodeName: "bench", Resolver: c.r, Sinks: []observer.FlowSink{m}})
			if err != nil {
				b.Fatal(err)
			}
			fl, _ := o.Ring().Follow(1024)
			defer fl.Close()
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					o.Handle(&evs[i%len(evs)])
					i++
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkAgentResolverPublish measures building and publishing a view
// of the fixture (what every sync and attachment change costs).
func BenchmarkAgentResolverPublish(b *testing.B) {
	f := newViewFixture(b, benchViewSize)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		f.n.publishEventView()
	}
}

// BenchmarkAgentResolverLookups is the resolver's share of one event
// (endpoint, source and destination addresses, labels, policies), per
// resolver, from parallel goroutines.
func BenchmarkAgentResolverLookups(b *testing.B) {
	f := newViewFixture(b, benchViewSize)
	evs := benchViewEvents(b, f)
	for _, c := range []struct {
		name string
		r    observer.Resolver
	}{
		{"resolver=agent", resolver{f.n}},
		{"resolver=direct", f.direct()},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					ev := &evs[i%len(evs)]
					c.r.EndpointByID(ev.EndpointID)
					c.r.EndpointByIP(ev.Src)
					c.r.EndpointByIP(ev.Dst)
					c.r.IdentityLabels(ev.SrcIdentity)
					c.r.RulePolicies(ev.RuleID)
					c.r.SelectingPolicies(ev.EndpointID, ev.Direction)
					i++
				}
			})
		})
	}
}
