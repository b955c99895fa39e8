package printer

import (
	"bytes"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func ipv6Drop() *flowpb.Flow {
	return &flowpb.Flow{
		Time:           timestamppb.New(time.Date(2026, 11, 26, 4, 0, 1, 5e8, time.UTC)),
		Verdict:        flowpb.Verdict_DROPPED,
		DropReasonDesc: flowpb.DropReason_POLICY_DENY,
		EventType:      &flowpb.CiliumEventType{Type: 1, SubType: 181},
		IP:             &flowpb.IP{Source: "fd00::1", Destination: "2001:db8::7", IpVersion: flowpb.IPVersion_IPv6},
		L4:             &flowpb.Layer4{Protocol: &flowpb.Layer4_UDP{UDP: &flowpb.UDP{SourcePort: 5353, DestinationPort: 53}}},
		Source:         &flowpb.Endpoint{ID: 3, Identity: 300, Namespace: "demo", PodName: "client"},
		Destination:    &flowpb.Endpoint{Identity: 2, Labels: []string{"reserved:world"}},
		EgressDeniedBy: []*flowpb.Policy{{Name: "no-world", Kind: "CiliumClusterwideNetworkPolicy"}},
		Summary:        "UDP",
	}
}

func TestCompactLine(t *testing.T) {
	var out, errOut bytes.Buffer
	p := New(&out, &errOut, Options{Format: Compact, PolicyNames: true, Location: time.UTC})
	if err := p.Write(&observerpb.GetFlowsResponse{ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: ipv6Drop()}}); err != nil {
		t.Fatal(err)
	}
	want := "Nov 26 04:00:01.500: demo/client:5353 (ID:300) -> [2001:db8::7]:53 (world) Policy denied by denylist DROPPED (UDP) [denied by no-world]\n"
	if out.String() != want {
		t.Errorf("compact\n got %q\nwant %q", out.String(), want)
	}
	if err := p.Write(&observerpb.GetFlowsResponse{ResponseTypes: &observerpb.GetFlowsResponse_LostEvents{
		LostEvents: &flowpb.LostEvent{Source: flowpb.LostEventSource_OBSERVER_EVENTS_QUEUE, NumEventsLost: 12}}}); err != nil {
		t.Fatal(err)
	}
	if errOut.String() != "EVENTS LOST: OBSERVER_EVENTS_QUEUE 12\n" {
		t.Errorf("lost events notice %q", errOut.String())
	}
}

func TestTableAndDict(t *testing.T) {
	var out bytes.Buffer
	p := New(&out, &out, Options{Format: Table, Location: time.UTC})
	for range 2 {
		if err := p.Write(&observerpb.GetFlowsResponse{ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: ipv6Drop()}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "TIMESTAMP") || strings.Index(lines[0], "VERDICT") != strings.Index(lines[1], "DROPPED") {
		t.Errorf("table not aligned:\n%s", out.String())
	}
	out.Reset()
	p = New(&out, &out, Options{Format: Dict, Location: time.UTC})
	for range 2 {
		if err := p.Write(&observerpb.GetFlowsResponse{ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: ipv6Drop()}}); err != nil {
			t.Fatal(err)
		}
	}
	if strings.Count(out.String(), "------------") != 1 || !strings.Contains(out.String(), "        TYPE: Policy denied by denylist") {
		t.Errorf("dict:\n%s", out.String())
	}
	if _, err := ParseFormat("yaml"); err == nil {
		t.Error("yaml accepted")
	}
}

func TestPolicyVerdictShowsMatchType(t *testing.T) {
	f := &flowpb.Flow{
		Time:             timestamppb.New(time.Date(2026, 11, 26, 4, 0, 2, 0, time.UTC)),
		Verdict:          flowpb.Verdict_FORWARDED,
		EventType:        &flowpb.CiliumEventType{Type: 5},
		TrafficDirection: flowpb.TrafficDirection_INGRESS,
		PolicyMatchType:  2,
		IP:               &flowpb.IP{Source: "10.0.0.1", Destination: "10.0.0.2"},
		L4:               &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: 40000, DestinationPort: 80}}},
		Source:           &flowpb.Endpoint{Identity: 300, Namespace: "demo", PodName: "client"},
		Destination:      &flowpb.Endpoint{Identity: 301, Namespace: "demo", PodName: "server"},
	}
	for _, c := range []struct {
		match   uint32
		verdict flowpb.Verdict
		want    string
	}{
		{2, flowpb.Verdict_FORWARDED, "policy-verdict:L3-L4 INGRESS ALLOWED FORWARDED"},
		{1, flowpb.Verdict_FORWARDED, "policy-verdict:L3-Only INGRESS ALLOWED FORWARDED"},
		{3, flowpb.Verdict_FORWARDED, "policy-verdict:L4-Only INGRESS ALLOWED FORWARDED"},
		{4, flowpb.Verdict_FORWARDED, "policy-verdict:all INGRESS ALLOWED FORWARDED"},
		{0, flowpb.Verdict_DROPPED, "policy-verdict:none INGRESS DENIED DROPPED"},
		{1 << 20, flowpb.Verdict_FORWARDED, "policy-verdict:unknown INGRESS ALLOWED FORWARDED"},
	} {
		f.PolicyMatchType, f.Verdict = c.match, c.verdict
		var out bytes.Buffer
		p := New(&out, &out, Options{Format: Compact, Location: time.UTC})
		if err := p.Write(&observerpb.GetFlowsResponse{ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: f}}); err != nil {
			t.Fatal(err)
		}
		want := "Nov 26 04:00:02.000: demo/client:40000 (ID:300) -> demo/server:80 (ID:301) " + c.want + "\n"
		if out.String() != want {
			t.Errorf("match type %d:\n got %q\nwant %q", c.match, out.String(), want)
		}
	}
}

// L7 flows print as hubble prints them.
func TestL7Lines(t *testing.T) {
	base := func(typ flowpb.L7FlowType, v flowpb.Verdict, rec *flowpb.Layer7) *flowpb.Flow {
		rec.Type = typ
		return &flowpb.Flow{
			Time:        timestamppb.New(time.Date(2026, 11, 26, 4, 0, 1, 0, time.UTC)),
			Verdict:     v,
			Type:        flowpb.FlowType_L7,
			EventType:   &flowpb.CiliumEventType{Type: 129},
			IsReply:     wrapperspb.Bool(typ == flowpb.L7FlowType_RESPONSE),
			IP:          &flowpb.IP{Source: "10.0.0.1", Destination: "10.0.0.2"},
			L4:          &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: 40000, DestinationPort: 8080}}},
			Source:      &flowpb.Endpoint{Identity: 1001, Namespace: "demo", PodName: "frontend-0"},
			Destination: &flowpb.Endpoint{Identity: 1002, Namespace: "demo", PodName: "backend-0"},
			L7:          rec,
			IngressDeniedBy: func() []*flowpb.Policy {
				if v == flowpb.Verdict_DROPPED {
					return []*flowpb.Policy{{Namespace: "demo", Name: "l7-http-policy"}}
				}
				return nil
			}(),
		}
	}
	reply := func(f *flowpb.Flow) *flowpb.Flow {
		f.Source, f.Destination = f.Destination, f.Source
		f.IP.Source, f.IP.Destination = f.IP.Destination, f.IP.Source
		tcp := f.L4.GetTCP()
		tcp.SourcePort, tcp.DestinationPort = tcp.DestinationPort, tcp.SourcePort
		return f
	}
	tests := []struct {
		f    *flowpb.Flow
		want string
	}{
		{base(flowpb.L7FlowType_REQUEST, flowpb.Verdict_DROPPED, &flowpb.Layer7{Record: &flowpb.Layer7_Http{Http: &flowpb.HTTP{Method: "DELETE", Url: "http://backend:8080/api/v1/users", Protocol: "HTTP/1.1"}}}),
			"Nov 26 04:00:01.000: demo/frontend-0:40000 (ID:1001) -> demo/backend-0:8080 (ID:1002) http-request DROPPED (HTTP/1.1 DELETE http://backend:8080/api/v1/users) [denied by demo/l7-http-policy]"},
		{reply(base(flowpb.L7FlowType_RESPONSE, flowpb.Verdict_FORWARDED, &flowpb.Layer7{LatencyNs: 3e6, Record: &flowpb.Layer7_Http{Http: &flowpb.HTTP{Code: 200, Method: "GET", Url: "http://backend:8080/health", Protocol: "HTTP/1.1"}}})),
			"Nov 26 04:00:01.000: demo/frontend-0:40000 (ID:1001) <- demo/backend-0:8080 (ID:1002) http-response FORWARDED (HTTP/1.1 200 3ms (GET http://backend:8080/health))"},
		{base(flowpb.L7FlowType_REQUEST, flowpb.Verdict_FORWARDED, &flowpb.Layer7{Record: &flowpb.Layer7_Dns{Dns: &flowpb.DNS{Query: "api.github.com.", Qtypes: []string{"A"}}}}),
			"Nov 26 04:00:01.000: demo/frontend-0:40000 (ID:1001) -> demo/backend-0:8080 (ID:1002) dns-request FORWARDED (DNS Query api.github.com. A)"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		p := New(&out, &out, Options{Format: Compact, PolicyNames: true, Location: time.UTC})
		if err := p.Write(&observerpb.GetFlowsResponse{ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: tt.f}}); err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSuffix(out.String(), "\n"); got != tt.want {
			t.Errorf("\n got %q\nwant %q", got, tt.want)
		}
	}
}
