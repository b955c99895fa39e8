package metrics

import (
	"context"
	"net/netip"
	"testing"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/observer"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// benchEvents is a realistic mix: mostly allowed new connections, some
// default-deny and explicit-deny drops, both directions.
func benchEvents() []event.Event {
	var evs []event.Event
	for i := 0; i < 64; i++ {
		ev := *drop(event.ReasonPolicyDenied, resolved.Ingress, 0)
		ev.SrcPort = uint16(30000 + i)
		ev.Src = netip.AddrFrom4([4]byte{10, 0, byte(i / 250), byte(1 + i%250)})
		switch {
		case i%10 < 7:
			ev.Type, ev.Verdict, ev.Reason = event.TypePolicyVerdict, event.Forwarded, event.ReasonNone
			ev.RuleID = 9
		case i%10 == 7:
			ev.Direction, ev.Reason, ev.RuleID = resolved.Egress, event.ReasonPolicyDenyRule, 9
		}
		evs = append(evs, ev)
	}
	return evs
}

func benchObserver(b *testing.B, withMetrics bool) *observer.Observer {
	var sinks []observer.FlowSink
	if withMetrics {
		m, err := New(Options{CiliumCompat: true})
		if err != nil {
			b.Fatal(err)
		}
		sinks = append(sinks, m)
	}
	o, err := observer.New(observer.Options{NodeName: "bench", Resolver: policyResolver{}, Sinks: sinks})
	if err != nil {
		b.Fatal(err)
	}
	return o
}

func runHandle(b *testing.B, o *observer.Observer) {
	evs := benchEvents()
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
}

// BenchmarkEventPathBaseline is the event → flow → ring path alone: the
// baseline the full path is compared with.
func BenchmarkEventPathBaseline(b *testing.B) { runHandle(b, benchObserver(b, false)) }

// BenchmarkEventPath is event → flow → ring → metrics (Cilium-compatible
// names too), with a live follower that nobody reads (it must not slow the
// producer down: it loses flows instead).
func BenchmarkEventPath(b *testing.B) {
	o := benchObserver(b, true)
	f, _ := o.Ring().Follow(1024)
	defer f.Close()
	runHandle(b, o)
}

// BenchmarkEventPathRun feeds events through Observer.Run from a channel, as
// the agent wires it (one consumer goroutine).
func BenchmarkEventPathRun(b *testing.B) {
	o := benchObserver(b, true)
	evs := benchEvents()
	ch := make(chan event.Event, 4096)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		_ = o.Run(ctx, ch)
		close(done)
	}()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ch <- evs[i%len(evs)]
	}
	close(ch)
	<-done
	cancel()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
