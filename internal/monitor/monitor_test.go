package monitor

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/observer"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

func TestLines(t *testing.T) {
	o, err := observer.New(observer.Options{NodeName: "n"})
	if err != nil {
		t.Fatal(err)
	}
	base := event.Event{
		EndpointID: 123, Direction: resolved.Ingress, SrcIdentity: 456, DstIdentity: 789,
		Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"),
		SrcPort: 1234, DstPort: 80, Proto: resolved.ProtoTCP, TCPFlags: 0x02,
	}
	tests := []struct {
		name   string
		mutate func(*event.Event)
		want   string
	}{
		{"ingress drop", func(e *event.Event) {
			e.Type, e.Verdict, e.Reason = event.TypeDrop, event.Dropped, event.ReasonPolicyDenied
		},
			"xx drop (Policy denied) to endpoint 123, identity 456->789: 10.0.0.1:1234 -> 10.0.0.2:80 tcp SYN"},
		{"egress deny rule", func(e *event.Event) {
			e.Type, e.Verdict, e.Reason, e.Direction = event.TypeDrop, event.Dropped, event.ReasonPolicyDenyRule, resolved.Egress
		}, "xx drop (Policy denied by denylist) from endpoint 123, identity 456->789: 10.0.0.1:1234 -> 10.0.0.2:80 tcp SYN"},
		{"policy verdict allow", func(e *event.Event) { e.Type, e.Verdict = event.TypePolicyVerdict, event.Forwarded },
			"Policy verdict log: local EP ID 123, remote ID 456, proto 6, ingress, action allow, 10.0.0.1:1234 -> 10.0.0.2:80 tcp SYN"},
		{"policy verdict egress udp", func(e *event.Event) {
			e.Type, e.Verdict, e.Direction, e.Proto, e.TCPFlags = event.TypePolicyVerdict, event.Redirected, resolved.Egress, resolved.ProtoUDP, 0
		}, "Policy verdict log: local EP ID 123, remote ID 789, proto 17, egress, action redirect, 10.0.0.1:1234 -> 10.0.0.2:80 udp"},
		{"trace icmp", func(e *event.Event) {
			e.Type, e.Verdict, e.Proto, e.DstPort, e.DstIdentity = event.TypeTrace, event.Forwarded, resolved.ProtoICMP, 8<<8, identity.World
		}, "-> endpoint 123, identity 456->2 state new: 10.0.0.1 -> 10.0.0.2 EchoRequest"},
		{"trace udp reply to stack", func(e *event.Event) {
			e.Type, e.Verdict, e.Direction, e.Proto, e.TCPFlags = event.TypeTrace, event.Forwarded, resolved.Egress, resolved.ProtoUDP, 0
			e.TracePoint, e.IsReply = event.ToStack, true
		}, "-> stack, identity 456->789 state reply: 10.0.0.1:1234 -> 10.0.0.2:80 udp"},
		{"trace tcp fin from endpoint", func(e *event.Event) {
			e.Type, e.Verdict, e.Direction, e.TCPFlags, e.TracePoint = event.TypeTrace, event.Forwarded, resolved.Egress, 0x11, event.FromEndpoint
		}, "<- endpoint 123, identity 456->789 state established: 10.0.0.1:1234 -> 10.0.0.2:80 tcp ACK, FIN"},
		{"trace to proxy", func(e *event.Event) {
			e.Type, e.Verdict, e.TracePoint = event.TypeTrace, event.Forwarded, event.ToProxy
		}, "-> proxy, identity 456->789 state new: 10.0.0.1:1234 -> 10.0.0.2:80 tcp SYN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := base
			tt.mutate(&ev)
			if got := Line(o.Handle(&ev)); got != tt.want {
				t.Errorf("line\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestJSONAndFilters(t *testing.T) {
	o, err := observer.New(observer.Options{NodeName: "n"})
	if err != nil {
		t.Fatal(err)
	}
	ev := event.Event{
		Type: event.TypeDrop, Verdict: event.Dropped, Reason: event.ReasonPolicyDenyRule,
		EndpointID: 7, Direction: resolved.Egress, SrcIdentity: 300, DstIdentity: 2,
		Src: netip.MustParseAddr("fd00::1"), Dst: netip.MustParseAddr("fd00::2"),
		SrcPort: 5000, DstPort: 443, Proto: resolved.ProtoTCP, TCPFlags: 0x12,
	}
	f := o.Handle(&ev)
	b, err := JSON(f)
	if err != nil {
		t.Fatal(err)
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if r.Type != "drop" || r.Reason != "Policy denied by denylist" || r.ReasonCode != 181 || r.Endpoint != 7 ||
		r.Direction != "egress" || r.DstPort != 443 || r.TCPFlags != "SYN,ACK" || r.Protocol != 6 {
		t.Errorf("record %+v", r)
	}
	if want := "xx drop (Policy denied by denylist) from endpoint 7, identity 300->2: [fd00::1]:5000 -> [fd00::2]:443 tcp SYN, ACK"; r.Summary != want {
		t.Errorf("summary %q, want %q", r.Summary, want)
	}
	for _, tt := range []struct {
		ef   EndpointFilter
		want bool
	}{
		{EndpointFilter{}, true},
		{EndpointFilter{From: []uint32{7}}, true},
		{EndpointFilter{To: []uint32{7}}, false},
		{EndpointFilter{From: []uint32{8}, To: []uint32{7}}, false},
		{EndpointFilter{Related: []uint32{7}}, true},
	} {
		if got := tt.ef.Match(f); got != tt.want {
			t.Errorf("filter %+v: %v, want %v", tt.ef, got, tt.want)
		}
	}
	if _, err := ParseType("l7"); err == nil {
		t.Error("unknown type accepted")
	}
	if typ, err := ParseType("policy-verdict"); err != nil || typ.MonitorType() != observer.MonitorTypePolicyVerdict {
		t.Errorf("policy-verdict: %v %v", typ, err)
	}
}
