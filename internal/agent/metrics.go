package agent

import (
	"github.com/bulwark-net/bulwark/internal/datapath"
	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/metrics"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// datapathMetrics adapts the datapath's counters to what metrics pulls at
// scrape time.
type datapathMetrics struct{ dp *datapath.Datapath }

func (d datapathMetrics) Traffic() ([]metrics.TrafficSample, error) {
	m, err := d.dp.Metrics()
	if err != nil {
		return nil, err
	}
	var out []metrics.TrafficSample
	for _, dir := range []resolved.Direction{resolved.Ingress, resolved.Egress} {
		dm := m.Dir(dir)
		fwd := dm.Forwarded
		fwd.Packets += dm.Redirected.Packets
		fwd.Bytes += dm.Redirected.Bytes
		out = append(out, metrics.TrafficSample{Direction: dir, Verdict: event.Forwarded, Packets: fwd.Packets, Bytes: fwd.Bytes},
			metrics.TrafficSample{Direction: dir, Verdict: event.Forwarded, Path: "fast", Packets: dm.Fast.Packets, Bytes: dm.Fast.Bytes})
		if dir == resolved.Egress {
			out = append(out, metrics.TrafficSample{Direction: dir, Verdict: event.Forwarded, Path: "local_delivery",
				Packets: dm.LocalDelivered.Packets, Bytes: dm.LocalDelivered.Bytes})
		}
		for reason, c := range dm.Dropped {
			out = append(out, metrics.TrafficSample{Direction: dir, Verdict: event.Dropped, Reason: reason, Packets: c.Packets, Bytes: c.Bytes})
		}
	}
	return out, nil
}

func (d datapathMetrics) MapPressure() map[string]float64 { return d.dp.MapPressure() }

func (d datapathMetrics) EventsLost() uint64 {
	m, err := d.dp.Metrics()
	if err != nil {
		return 0
	}
	return m.Ingress.EventsLost + m.Egress.EventsLost
}

// agentMetricsState gives metrics the endpoint and identity counts.
type agentMetricsState struct{ n *node }

func (s agentMetricsState) Enforcement() metrics.EnforcementCounts {
	var c metrics.EnforcementCounts
	s.n.mu.Lock()
	snap := s.n.snap
	keys := make([]string, 0, len(s.n.attached))
	for _, k := range s.n.attached {
		keys = append(keys, k)
	}
	s.n.mu.Unlock()
	if snap == nil {
		return c
	}
	for _, k := range keys {
		ns, name := splitKey(k)
		ep := snap.Endpoints[endpointKeyOf(ns, name)]
		if ep == nil || ep.Policy == nil {
			continue
		}
		in, eg := ep.Policy.Ingress.Enforced, ep.Policy.Egress.Enforced
		switch {
		case in && eg:
			c.Both++
		case in:
			c.Ingress++
		case eg:
			c.Egress++
		default:
			c.None++
		}
	}
	return c
}

func (s agentMetricsState) Identities() map[string]int {
	out := map[string]int{}
	for id := range s.n.repo.Allocator().All() {
		switch {
		case id.IsReserved():
			out["reserved"]++
		case id.IsLocal():
			out["local"]++
		default:
			out["cluster"]++
		}
	}
	return out
}
