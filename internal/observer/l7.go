package observer

import (
	"fmt"
	"strings"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/proxy"
)

// MonitorTypeAccessLog is Cilium's monitor type of L7 (proxy access log)
// events, which Hubble shows as flow.event_type.type.
const MonitorTypeAccessLog = 129

var accessLogType = &flowpb.CiliumEventType{Type: MonitorTypeAccessLog}

// L7Sink consumes every L7 flow as it is built (metrics). Like FlowSink it
// runs on the caller's path: fast, never blocking, not keeping rec.
type L7Sink interface {
	ObserveL7(rec *proxy.Record, f *flowpb.Flow)
}

// HandleL7 turns one proxy Record (HTTP, gRPC or DNS) into a Hubble L7
// flow, records it and hands it to the sinks that implement L7Sink. It is
// safe for concurrent use and never blocks: it is the proxies' Recorder
// (pass o.HandleL7 wrapped as proxy.Recorder).
func (o *Observer) HandleL7(rec proxy.Record) *flowpb.Flow {
	f := o.conv.toL7Flow(&rec)
	o.noteNamespace(f.GetSource().GetNamespace())
	o.noteNamespace(f.GetDestination().GetNamespace())
	o.ring.Push(f)
	for _, s := range o.sinks {
		if ls, ok := s.(L7Sink); ok {
			ls.ObserveL7(&rec, f)
		}
	}
	return f
}

// Recorder returns HandleL7 as a proxy.Recorder.
func (o *Observer) Recorder() proxy.Recorder {
	return func(r proxy.Record) { o.HandleL7(r) }
}

// l7Verdict maps a proxy verdict to Hubble's (a rate-limited request is
// DROPPED, as Hubble has no verdict of its own for it).
func l7Verdict(v proxy.Verdict) flowpb.Verdict {
	switch v {
	case proxy.Forwarded:
		return flowpb.Verdict_FORWARDED
	case proxy.Dropped, proxy.RateLimited:
		return flowpb.Verdict_DROPPED
	case proxy.Error:
		return flowpb.Verdict_ERROR
	}
	return flowpb.Verdict_VERDICT_UNKNOWN
}

// toL7Flow builds the flow of one Record. As in Hubble, a response flows
// from the server back to the client (source and destination swapped,
// is_reply set).
func (c *converter) toL7Flow(r *proxy.Record) *flowpb.Flow {
	t := r.Time
	if t.IsZero() {
		t = time.Now()
	}
	reply := r.Type == proxy.Response
	f := &flowpb.Flow{
		Time:      timestamppb.New(t),
		Uuid:      c.ids.next(),
		Verdict:   l7Verdict(r.Verdict),
		Type:      flowpb.FlowType_L7,
		NodeName:  c.nodeName,
		EventType: accessLogType,
		IsReply:   isReplyValue[boolIndex(reply)],
		Reply:     reply,
	}
	if r.Direction == resolved.Egress {
		f.TrafficDirection = flowpb.TrafficDirection_EGRESS
	} else {
		f.TrafficDirection = flowpb.TrafficDirection_INGRESS
	}
	if r.Verdict == proxy.Dropped {
		f.DropReasonDesc = flowpb.DropReason_POLICY_DENIED
		f.DropReason = uint32(flowpb.DropReason_POLICY_DENIED)
	}
	src, dst := r.Flow.Src, r.Flow.Dst
	srcID, dstID := r.Flow.SrcIdentity, r.Flow.DstIdentity
	ev := &event.Event{EndpointID: r.EndpointID, Direction: r.Direction, Proto: r.Flow.Protocol,
		Src: src.Addr(), Dst: dst.Addr(), SrcPort: src.Port(), DstPort: dst.Port(), SrcIdentity: srcID, DstIdentity: dstID}
	localIsSrc := r.Direction == resolved.Egress
	source := c.endpoint(ev, src.Addr(), srcID, localIsSrc)
	destination := c.endpoint(ev, dst.Addr(), dstID, !localIsSrc)
	if reply {
		src, dst = dst, src
		source, destination = destination, source
		ev.Src, ev.Dst, ev.SrcPort, ev.DstPort = ev.Dst, ev.Src, ev.DstPort, ev.SrcPort
	}
	f.Source, f.Destination = source, destination
	if src.IsValid() || dst.IsValid() {
		ipVersion := flowpb.IPVersion_IPv4
		if src.Addr().Is6() && !src.Addr().Is4In6() {
			ipVersion = flowpb.IPVersion_IPv6
		}
		f.IP = &flowpb.IP{Source: addrString(src.Addr()), Destination: addrString(dst.Addr()), IpVersion: ipVersion}
	}
	if ev.Proto == resolved.ProtoTCP {
		// An L7 record is not a packet: no TCP flags.
		f.L4 = &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: uint32(ev.SrcPort), DestinationPort: uint32(ev.DstPort)}}}
	} else {
		f.L4, _ = layer4(ev)
	}

	l7 := &flowpb.Layer7{Type: flowpb.L7FlowType_REQUEST, LatencyNs: uint64(r.Latency.Nanoseconds())}
	if reply {
		l7.Type = flowpb.L7FlowType_RESPONSE
	}
	switch {
	case r.HTTP != nil:
		h := &flowpb.HTTP{Code: uint32(r.HTTP.Code), Method: r.HTTP.Method, Url: r.HTTP.URL, Protocol: r.HTTP.Protocol}
		for _, hd := range r.HTTP.Headers {
			h.Headers = append(h.Headers, &flowpb.HTTPHeader{Key: hd.Key, Value: hd.Value})
		}
		l7.Record = &flowpb.Layer7_Http{Http: h}
		// Cilium's Hubble parser's summaries: the stock hubble CLI prints them.
		f.Summary = r.HTTP.Protocol + " " + r.HTTP.Method + " " + r.HTTP.URL
		if reply {
			f.Summary = fmt.Sprintf("%s %d %dms (%s %s)", r.HTTP.Protocol, r.HTTP.Code, r.Latency.Milliseconds(), r.HTTP.Method, r.HTTP.URL)
		}
	case r.DNS != nil:
		d := &flowpb.DNS{Query: r.DNS.Query, Qtypes: r.DNS.QTypes, Rcode: uint32(r.DNS.RCode), Ttl: r.DNS.TTL, ObservationSource: "proxy"}
		for _, ip := range r.DNS.IPs {
			d.Ips = append(d.Ips, ip.String())
		}
		l7.Record = &flowpb.Layer7_Dns{Dns: d}
		qtypes := strings.Join(r.DNS.QTypes, ",")
		f.Summary = "DNS Query " + r.DNS.Query + " " + qtypes
		if reply {
			answer := fmt.Sprintf("%q", strings.Join(d.Ips, ","))
			if r.DNS.RCode != 0 {
				answer = "RCode: " + dnsRcodeName(r.DNS.RCode)
			}
			f.Summary = fmt.Sprintf("DNS Answer %s TTL: %d (Proxy %s %s)", answer, r.DNS.TTL, r.DNS.Query, qtypes)
		}
	}
	f.L7 = l7
	c.attachL7Policies(r, f)
	return f
}

// attachL7Policies names the deciding policies in the fields L3/L4 flows
// use. L7 rules come only from CiliumNetworkPolicy ("namespace/name") and
// CiliumClusterwideNetworkPolicy ("name").
func (c *converter) attachL7Policies(r *proxy.Record, f *flowpb.Flow) {
	if len(r.Policies) == 0 {
		return
	}
	pols := make([]*flowpb.Policy, len(r.Policies))
	for i, name := range r.Policies {
		ref := resolved.PolicyRef{Kind: "CiliumClusterwideNetworkPolicy", Name: name}
		if ns, n, ok := strings.Cut(name, "/"); ok {
			ref = resolved.PolicyRef{Kind: "CiliumNetworkPolicy", Namespace: ns, Name: n}
		}
		pols[i] = c.policy(ref)
	}
	denied := r.Verdict == proxy.Dropped || r.Verdict == proxy.RateLimited
	switch {
	case denied && r.Direction == resolved.Egress:
		f.EgressDeniedBy = pols
	case denied:
		f.IngressDeniedBy = pols
	case r.Direction == resolved.Egress:
		f.EgressAllowedBy = pols
	default:
		f.IngressAllowedBy = pols
	}
}

// dnsRcodeName names a DNS response code as Hubble's summaries do.
func dnsRcodeName(rcode int) string {
	switch rcode {
	case 1:
		return "Format Error"
	case 2:
		return "Server Failure"
	case 3:
		return "Non-Existent Domain"
	case 4:
		return "Not Implemented"
	case 5:
		return "Query Refused"
	}
	return fmt.Sprintf("%d", rcode)
}
