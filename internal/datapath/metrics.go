package datapath

import (
	"fmt"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// Metric slot codes beyond the drop reasons (bpf/include/bulwark_maps.h).
const (
	metricCodes       = 32
	codeForwarded     = 0
	codeAudited       = 27 // new flows an audit-mode deny passed
	codeForwardedFast = 28 // forwarded by the established fast path
	codeRedirected    = 29
	codeEventsLost    = 30
	codeLocalDelivery = 31 // egress: handed to a local pod by redirect_peer
)

// Counter is a packet and byte count.
type Counter struct {
	Packets, Bytes uint64
}

// DirMetrics are the counters of one direction.
type DirMetrics struct {
	Forwarded Counter // all forwarded packets, Fast included
	// Fast counts the packets of established flows the fast path passed
	// (fast_established in bpf/datapath.c).
	Fast       Counter
	Redirected Counter
	// Audited counts the new flows (first packets) an audit-mode policy
	// would have dropped and that passed; they are in Forwarded too.
	Audited Counter
	// LocalDelivered counts the packets the source pod's program handed
	// straight to a pod on this node after deciding the destination's
	// ingress too (egress only; they are also in the destination's
	// Ingress.Forwarded).
	LocalDelivered Counter
	Dropped        map[event.DropReason]Counter // only reasons seen
	EventsLost     uint64                       // ring buffer full
}

// Metrics is a snapshot of the datapath's counters, summed over CPUs.
type Metrics struct {
	Ingress, Egress DirMetrics
	// Overflows counts table/identity overflows the syncer raised.
	Overflows uint64
}

// Dir returns the counters of a direction.
func (m *Metrics) Dir(d resolved.Direction) *DirMetrics {
	if d == resolved.Egress {
		return &m.Egress
	}
	return &m.Ingress
}

// Metrics reads the per-CPU counters.
func (dp *Datapath) Metrics() (Metrics, error) {
	m := Metrics{Overflows: dp.overflows.Load()}
	for _, d := range []resolved.Direction{resolved.Ingress, resolved.Egress} {
		dm := m.Dir(d)
		dm.Dropped = map[event.DropReason]Counter{}
		for code := uint32(0); code < metricCodes; code++ {
			var per []bpfBwMetric
			if err := dp.objs.BwMetrics.Lookup(uint32(d)*metricCodes+code, &per); err != nil {
				return Metrics{}, fmt.Errorf("read metrics: %w", err)
			}
			var c Counter
			for _, p := range per {
				c.Packets += p.Packets
				c.Bytes += p.Bytes
			}
			switch {
			case code == codeForwarded:
				dm.Forwarded.Packets += c.Packets
				dm.Forwarded.Bytes += c.Bytes
			case code == codeForwardedFast:
				dm.Fast = c
				dm.Forwarded.Packets += c.Packets
				dm.Forwarded.Bytes += c.Bytes
			case code == codeRedirected:
				dm.Redirected = c
			case code == codeEventsLost:
				dm.EventsLost = c.Packets
			case code == codeLocalDelivery:
				dm.LocalDelivered = c
			case code == codeAudited:
				dm.Audited = c
			case c.Packets > 0:
				dm.Dropped[event.DropReason(code)] = c
			}
		}
	}
	// Records the reader could not read or decode are lost too; they
	// are not per direction, so they count as ingress.
	m.Ingress.EventsLost += dp.eventsReadErrors.Load()
	return m, nil
}

// MapPressure is the fill ratio (0..1) of each bounded map, as of the last
// Sync and conntrack GC.
func (dp *Datapath) MapPressure() map[string]float64 {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	ratio := func(n int, max uint32) float64 { return float64(n) / float64(max) }
	return map[string]float64{
		"endpoints":    ratio(len(dp.endpoints), dp.sizes.Endpoints),
		"ipcache":      ratio(dp.counts["ipcache"], dp.sizes.IPCache),
		"id_selectors": ratio(dp.counts["id_selectors"], dp.sizes.IdentitySelectors),
		"policy":       ratio(dp.counts["policy"], dp.sizes.Policy),
		"conntrack":    ratio(dp.counts["conntrack"], dp.sizes.Conntrack),
	}
}

// RulePolicies names the policies behind a rule id of an event or a CT
// entry; nil for 0 (a default verdict) or an unknown id.
func (dp *Datapath) RulePolicies(ruleID uint32) []resolved.PolicyRef {
	return dp.RuleInfo(ruleID).Policies
}

// RuleInfo is what a rule id of an event or a CT entry stands for: its
// policies and match type; the zero RuleInfo (MatchNone) for 0 (a default
// verdict) or an unknown id. The caller owns the returned slice.
func (dp *Datapath) RuleInfo(ruleID uint32) RuleInfo {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	info, ok := dp.rules[ruleID]
	if !ok {
		return RuleInfo{}
	}
	info.Policies = append([]resolved.PolicyRef(nil), info.Policies...)
	return info
}

// RuleMatchType is the match type of a rule id (event.MatchNone for 0 or
// an unknown id), numbered as Hubble's flow.policy_match_type.
func (dp *Datapath) RuleMatchType(ruleID uint32) event.MatchType {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	return dp.rules[ruleID].MatchType
}

// Compiled returns the tables of the last Sync (for reference evaluation).
func (dp *Datapath) Compiled() *Compiled {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	return dp.compiled
}

// SelectingPolicies names the policies behind a default deny of an
// endpoint in a direction (an event with Reason POLICY_DENIED and RuleID 0):
// the policies that select the endpoint there, per the last Sync.
func (dp *Datapath) SelectingPolicies(endpointID uint32, dir resolved.Direction) []resolved.PolicyRef {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	if dp.desired == nil || dp.desired.Endpoints[endpointID] == nil {
		return nil
	}
	return append([]resolved.PolicyRef(nil), dp.desired.Endpoints[endpointID].Dir(dir).Selecting...)
}
