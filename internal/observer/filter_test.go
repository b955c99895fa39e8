package observer

import (
	"strings"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
)

func TestFilters(t *testing.T) {
	o := newTestObserver(t, 0)
	build := func(ev event.Event) *flowpb.Flow { return o.Handle(&ev) }
	allowed := build(allowedSYN(0)) // frontend → backend:8080 tcp, ingress, forwarded
	denied := build(deniedSYN(0))   // frontend → database:5432 tcp, ingress, dropped (default deny)
	world := build(deniedWorld(0))  // backend → world:443 tcp, egress, dropped (deny rule)
	dns := build(dnsQuery(0))       // frontend → backend:53 udp, egress, forwarded
	all := map[string]*flowpb.Flow{"allowed": allowed, "denied": denied, "world": world, "dns": dns}

	tests := []struct {
		name      string
		whitelist []*flowpb.FlowFilter
		blacklist []*flowpb.FlowFilter
		want      string // names of matching flows, sorted, comma separated
	}{
		{"no filter", nil, nil, "allowed,denied,dns,world"},
		{"uuid", []*flowpb.FlowFilter{{Uuid: []string{world.GetUuid()}}}, nil, "world"},
		// --namespace demo: either side in demo
		{"namespace either side", []*flowpb.FlowFilter{{SourcePod: []string{"demo/"}}, {DestinationPod: []string{"demo/"}}}, nil, "allowed,denied,dns,world"},
		{"destination pod prefix", []*flowpb.FlowFilter{{DestinationPod: []string{"demo/back"}}}, nil, "allowed,dns"},
		{"pod without namespace", []*flowpb.FlowFilter{{DestinationPod: []string{"database"}}}, nil, "denied"},
		{"other namespace", []*flowpb.FlowFilter{{SourcePod: []string{"prod/"}}}, nil, ""},
		{"verdict dropped", []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}}, nil, "denied,world"},
		{"from-label to-label", []*flowpb.FlowFilter{{SourceLabel: []string{"app=frontend"}, DestinationLabel: []string{"app=backend"}}}, nil, "allowed,dns"},
		{"label with source prefix", []*flowpb.FlowFilter{{DestinationLabel: []string{"k8s:app=database"}}}, nil, "denied"},
		{"label any source", []*flowpb.FlowFilter{{DestinationLabel: []string{"any:app=database"}}}, nil, "denied"},
		{"label set-based", []*flowpb.FlowFilter{{DestinationLabel: []string{"app in (database, backend), tier"}}}, nil, "allowed,denied,dns"},
		{"reserved label", []*flowpb.FlowFilter{{DestinationLabel: []string{"reserved:world"}}}, nil, "world"},
		{"source ip", []*flowpb.FlowFilter{{SourceIp: []string{"10.200.0.20"}}}, nil, "world"},
		{"destination cidr", []*flowpb.FlowFilter{{DestinationIp: []string{"192.0.2.0/24"}}}, nil, "world"},
		{"protocol udp", []*flowpb.FlowFilter{{Protocol: []string{"UDP"}}}, nil, "dns"},
		{"destination port", []*flowpb.FlowFilter{{DestinationPort: []string{"5432", "53"}}}, nil, "denied,dns"},
		{"source port", []*flowpb.FlowFilter{{SourcePort: []string{"50000"}}}, nil, "world"},
		{"direction egress", []*flowpb.FlowFilter{{TrafficDirection: []flowpb.TrafficDirection{flowpb.TrafficDirection_EGRESS}}}, nil, "dns,world"},
		{"event type drop", []*flowpb.FlowFilter{{EventType: []*flowpb.EventTypeFilter{{Type: MonitorTypeDrop}}}}, nil, "denied,world"},
		{"event type drop sub-type 181", []*flowpb.FlowFilter{{EventType: []*flowpb.EventTypeFilter{{Type: MonitorTypeDrop, MatchSubType: true, SubType: 181}}}}, nil, "world"},
		{"event type policy verdict", []*flowpb.FlowFilter{{EventType: []*flowpb.EventTypeFilter{{Type: MonitorTypePolicyVerdict}}}}, nil, "allowed,dns"},
		{"drop reason", []*flowpb.FlowFilter{{DropReasonDesc: []flowpb.DropReason{flowpb.DropReason_POLICY_DENY}}}, nil, "world"},
		{"identity", []*flowpb.FlowFilter{{DestinationIdentity: []uint32{2}}}, nil, "world"},
		{"source identity", []*flowpb.FlowFilter{{SourceIdentity: []uint32{uint32(frontendID)}}}, nil, "allowed,denied,dns"},
		{"reply false", []*flowpb.FlowFilter{{Reply: []bool{false}}}, nil, "allowed,denied,dns,world"},
		{"reply true", []*flowpb.FlowFilter{{Reply: []bool{true}}}, nil, ""},
		{"node name glob", []*flowpb.FlowFilter{{NodeName: []string{"default/node-*"}}}, nil, "allowed,denied,dns,world"},
		{"node name other", []*flowpb.FlowFilter{{NodeName: []string{"node-2"}}}, nil, ""},
		{"tcp flags", []*flowpb.FlowFilter{{TcpFlags: []*flowpb.TCPFlags{{SYN: true}}}}, nil, "allowed,denied,world"},
		{"ip version", []*flowpb.FlowFilter{{IpVersion: []flowpb.IPVersion{flowpb.IPVersion_IPv6}}}, nil, ""},
		{"blacklist", nil, []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}}, "allowed,dns"},
		{"whitelist and blacklist", []*flowpb.FlowFilter{{SourcePod: []string{"demo/frontend"}}}, []*flowpb.FlowFilter{{Protocol: []string{"udp"}}}, "allowed,denied"},
		{"fields in one filter are ANDed", []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}, TrafficDirection: []flowpb.TrafficDirection{flowpb.TrafficDirection_INGRESS}}}, nil, "denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := NewFilter(tt.whitelist, tt.blacklist)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, name := range []string{"allowed", "denied", "dns", "world"} {
				if f.Match(all[name]) {
					got = append(got, name)
				}
			}
			if s := strings.Join(got, ","); s != tt.want {
				t.Errorf("matched %q, want %q", s, tt.want)
			}
		})
	}
}

func TestFilterErrorsNameTheField(t *testing.T) {
	tests := []struct {
		ff   *flowpb.FlowFilter
		want string
	}{
		{&flowpb.FlowFilter{SourceIp: []string{"10.0.0.300"}}, "source_ip"},
		{&flowpb.FlowFilter{DestinationPort: []string{"http"}}, "destination_port"},
		{&flowpb.FlowFilter{Protocol: []string{"tcpp"}}, "protocol"},
		{&flowpb.FlowFilter{SourceLabel: []string{"app in ("}}, "source_label"},
		{&flowpb.FlowFilter{SourcePod: []string{""}}, "source_pod"},
		{&flowpb.FlowFilter{HttpStatusCode: []string{"4xx"}}, "http_status_code"},
		{&flowpb.FlowFilter{HttpPath: []string{"/api/("}}, "http_path"},
		{&flowpb.FlowFilter{DnsQuery: []string{"*.example"}}, "dns_query"},
		{&flowpb.FlowFilter{SourceFqdn: []string{"example.com"}}, "source_fqdn"},
		{&flowpb.FlowFilter{NodeName: []string{"[a"}}, "node_name"},
	}
	for _, tt := range tests {
		_, err := NewFilter(nil, []*flowpb.FlowFilter{tt.ff})
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "blacklist filter 0") {
			t.Errorf("filter %v: error %v, want one naming %s", tt.ff, err, tt.want)
		}
	}
}

// FuzzFilterStrings: user-supplied filter strings never panic the server,
// whether they compile or not.
func FuzzFilterStrings(f *testing.F) {
	for _, s := range []string{"app=frontend", "k8s:app in (a, b)", "!reserved:world", "demo/", "10.0.0.0/8", "fd00::1", "node-*", "any:x,y!=z"} {
		f.Add(s)
	}
	o, err := New(Options{NodeName: "node-1", Resolver: demoResolver()})
	if err != nil {
		f.Fatal(err)
	}
	ev := allowedSYN(0)
	flow := o.Handle(&ev)
	f.Fuzz(func(t *testing.T, s string) {
		ff := &flowpb.FlowFilter{
			SourceLabel: []string{s}, DestinationPod: []string{s}, SourceIp: []string{s},
			NodeName: []string{s}, Protocol: []string{s}, DestinationPort: []string{s},
		}
		for _, one := range []*flowpb.FlowFilter{
			{SourceLabel: ff.SourceLabel}, {DestinationPod: ff.DestinationPod}, {SourceIp: ff.SourceIp},
			{NodeName: ff.NodeName}, {Protocol: ff.Protocol}, {DestinationPort: ff.DestinationPort}, ff,
		} {
			if filter, err := NewFilter([]*flowpb.FlowFilter{one}, nil); err == nil {
				filter.Match(flow)
			}
		}
	})
}
