package ui

import (
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// Flow is the page's form of a Hubble flow: what the map, the table and
// the filters use, nothing more.
type Flow struct {
	ID         string    `json:"id"`
	Time       time.Time `json:"time"`
	Verdict    string    `json:"verdict"` // FORWARDED, DROPPED, AUDIT, REDIRECTED, ...
	DropReason string    `json:"dropReason,omitempty"`
	Direction  string    `json:"direction,omitempty"` // INGRESS, EGRESS
	Reply      bool      `json:"reply,omitempty"`
	Type       string    `json:"type"` // L3_L4, L7
	Src        Peer      `json:"src"`
	Dst        Peer      `json:"dst"`
	Protocol   string    `json:"protocol,omitempty"` // TCP, UDP, SCTP, ICMPv4, ICMPv6
	SrcPort    uint32    `json:"srcPort,omitempty"`
	Port       uint32    `json:"port,omitempty"` // destination port
	// Policies are the deciding policies as "Kind namespace/name": the
	// denying ones for a drop or an audit, else the allowing ones.
	Policies []string `json:"policies,omitempty"`
	Summary  string   `json:"summary,omitempty"`
	L7       *L7      `json:"l7,omitempty"`
}

// Peer is one side of a flow.
type Peer struct {
	Namespace string   `json:"namespace,omitempty"`
	Pod       string   `json:"pod,omitempty"`
	Workload  string   `json:"workload,omitempty"`
	IP        string   `json:"ip,omitempty"`
	Identity  uint32   `json:"identity"`
	Labels    []string `json:"labels,omitempty"`
	Names     []string `json:"names,omitempty"` // DNS names the address was learned from
}

// L7 is the application-layer part of a flow, when the proxy saw it.
type L7 struct {
	Type      string        `json:"type"` // REQUEST, RESPONSE, SAMPLE
	LatencyNs uint64        `json:"latencyNs,omitempty"`
	HTTP      *HTTP         `json:"http,omitempty"`
	DNS       *DNS          `json:"dns,omitempty"`
	Kafka     *flowpb.Kafka `json:"kafka,omitempty"`
}

// HTTP is one HTTP request or response.
type HTTP struct {
	Method   string `json:"method,omitempty"`
	URL      string `json:"url,omitempty"`
	Code     uint32 `json:"code,omitempty"`
	Protocol string `json:"protocol,omitempty"`
}

// DNS is one DNS query or answer.
type DNS struct {
	Query  string   `json:"query,omitempty"`
	IPs    []string `json:"ips,omitempty"`
	Rcode  uint32   `json:"rcode"`
	Qtypes []string `json:"qtypes,omitempty"`
}

// convert builds the page's flow; workloads maps "ns/pod" to a workload.
func convert(f *flowpb.Flow, workloads map[string]string) Flow {
	out := Flow{
		ID:      f.GetUuid(),
		Time:    f.GetTime().AsTime(),
		Verdict: f.GetVerdict().String(),
		Reply:   f.GetIsReply().GetValue(),
		Type:    f.GetType().String(),
		Src:     peer(f.GetSource(), f.GetIP().GetSource(), f.GetSourceNames(), workloads),
		Dst:     peer(f.GetDestination(), f.GetIP().GetDestination(), f.GetDestinationNames(), workloads),
		Summary: f.GetSummary(),
	}
	if f.GetDropReasonDesc() != flowpb.DropReason_DROP_REASON_UNKNOWN {
		out.DropReason = f.GetDropReasonDesc().String()
	}
	if d := f.GetTrafficDirection(); d != flowpb.TrafficDirection_TRAFFIC_DIRECTION_UNKNOWN {
		out.Direction = d.String()
	}
	switch l4 := f.GetL4().GetProtocol().(type) {
	case *flowpb.Layer4_TCP:
		out.Protocol, out.SrcPort, out.Port = "TCP", l4.TCP.GetSourcePort(), l4.TCP.GetDestinationPort()
	case *flowpb.Layer4_UDP:
		out.Protocol, out.SrcPort, out.Port = "UDP", l4.UDP.GetSourcePort(), l4.UDP.GetDestinationPort()
	case *flowpb.Layer4_SCTP:
		out.Protocol, out.SrcPort, out.Port = "SCTP", l4.SCTP.GetSourcePort(), l4.SCTP.GetDestinationPort()
	case *flowpb.Layer4_ICMPv4:
		out.Protocol = "ICMPv4"
	case *flowpb.Layer4_ICMPv6:
		out.Protocol = "ICMPv6"
	}
	var pols []*flowpb.Policy
	switch f.GetVerdict() {
	case flowpb.Verdict_DROPPED, flowpb.Verdict_AUDIT:
		pols = append(append(pols, f.GetEgressDeniedBy()...), f.GetIngressDeniedBy()...)
	default:
		pols = append(append(pols, f.GetEgressAllowedBy()...), f.GetIngressAllowedBy()...)
	}
	for _, p := range pols {
		name := p.GetName()
		if p.GetNamespace() != "" {
			name = p.GetNamespace() + "/" + name
		}
		if p.GetKind() != "" {
			name = p.GetKind() + " " + name
		}
		out.Policies = append(out.Policies, name)
	}
	if l7 := f.GetL7(); l7 != nil {
		o := &L7{Type: l7.GetType().String(), LatencyNs: l7.GetLatencyNs()}
		if h := l7.GetHttp(); h != nil {
			o.HTTP = &HTTP{Method: h.GetMethod(), URL: h.GetUrl(), Code: h.GetCode(), Protocol: h.GetProtocol()}
		}
		if d := l7.GetDns(); d != nil {
			o.DNS = &DNS{Query: d.GetQuery(), IPs: d.GetIps(), Rcode: d.GetRcode(), Qtypes: d.GetQtypes()}
		}
		o.Kafka = l7.GetKafka()
		out.L7 = o
	}
	return out
}

func peer(ep *flowpb.Endpoint, ip string, names []string, workloads map[string]string) Peer {
	p := Peer{
		Namespace: ep.GetNamespace(), Pod: ep.GetPodName(), IP: ip,
		Identity: ep.GetIdentity(), Labels: ep.GetLabels(), Names: names,
	}
	if p.Pod != "" {
		if wl, ok := workloads[p.Namespace+"/"+p.Pod]; ok {
			p.Workload = wl
		} else if len(ep.GetWorkloads()) > 0 {
			p.Workload = ep.GetWorkloads()[0].GetName()
		}
	}
	return p
}
