package observer

import (
	"net/netip"
	"strconv"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// TCP flag bits as the datapath reports them (event.Event.TCPFlags).
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
	tcpURG = 0x20
	tcpECE = 0x40
	tcpCWR = 0x80
)

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.Unmap().String()
}

// layer4 returns the L4 part of a flow and its one-line summary.
func layer4(ev *event.Event) (*flowpb.Layer4, string) {
	switch ev.Proto {
	case resolved.ProtoTCP:
		fl := &tcpFlagTable[ev.TCPFlags]
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{
			SourcePort: uint32(ev.SrcPort), DestinationPort: uint32(ev.DstPort), Flags: fl.flags,
		}}}, fl.summary
	case resolved.ProtoUDP:
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_UDP{UDP: &flowpb.UDP{
			SourcePort: uint32(ev.SrcPort), DestinationPort: uint32(ev.DstPort),
		}}}, "UDP"
	case resolved.ProtoSCTP:
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_SCTP{SCTP: &flowpb.SCTP{
			SourcePort: uint32(ev.SrcPort), DestinationPort: uint32(ev.DstPort),
		}}}, "SCTP"
	case resolved.ProtoICMP:
		typ, code := uint32(ev.DstPort>>8), uint32(ev.DstPort&0xff)
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv4{ICMPv4: &flowpb.ICMPv4{Type: typ, Code: code}}},
			"ICMPv4 " + ICMPTypeName(false, typ)
	case resolved.ProtoICMPv6:
		typ, code := uint32(ev.DstPort>>8), uint32(ev.DstPort&0xff)
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv6{ICMPv6: &flowpb.ICMPv6{Type: typ, Code: code}}},
			"ICMPv6 " + ICMPTypeName(true, typ)
	}
	if ev.Proto == resolved.ProtoAny {
		return nil, ""
	}
	return nil, "IP protocol " + strconv.Itoa(int(ev.Proto))
}

// tcpFlagTable holds, for every flags byte, the shared (immutable) flags
// message and the flow summary.
var tcpFlagTable = func() (t [256]struct {
	flags   *flowpb.TCPFlags
	summary string
}) {
	for b := range 256 {
		f := &flowpb.TCPFlags{
			FIN: b&tcpFIN != 0, SYN: b&tcpSYN != 0, RST: b&tcpRST != 0, PSH: b&tcpPSH != 0,
			ACK: b&tcpACK != 0, URG: b&tcpURG != 0, ECE: b&tcpECE != 0, CWR: b&tcpCWR != 0,
		}
		t[b].flags = f
		t[b].summary = "TCP Flags: " + TCPFlagsString(f, ", ")
	}
	return t
}()

// TCPFlagsString lists the set flags in Cilium's order ("SYN, ACK").
func TCPFlagsString(f *flowpb.TCPFlags, sep string) string {
	if f == nil {
		return ""
	}
	var names []string
	for _, fl := range []struct {
		set  bool
		name string
	}{
		{f.SYN, "SYN"}, {f.ACK, "ACK"}, {f.PSH, "PSH"}, {f.FIN, "FIN"},
		{f.RST, "RST"}, {f.URG, "URG"}, {f.ECE, "ECE"}, {f.CWR, "CWR"}, {f.NS, "NS"},
	} {
		if fl.set {
			names = append(names, fl.name)
		}
	}
	return strings.Join(names, sep)
}

var icmpv4Names = map[uint32]string{
	0: "EchoReply", 3: "DestinationUnreachable", 5: "Redirect", 8: "EchoRequest",
	11: "TimeExceeded", 12: "ParameterProblem", 13: "TimestampRequest", 14: "TimestampReply",
}

var icmpv6Names = map[uint32]string{
	1: "DestinationUnreachable", 2: "PacketTooBig", 3: "TimeExceeded", 4: "ParameterProblem",
	128: "EchoRequest", 129: "EchoReply", 133: "RouterSolicitation", 134: "RouterAdvertisement",
	135: "NeighborSolicitation", 136: "NeighborAdvertisement",
}

// ICMPTypeName names an ICMP type ("EchoRequest"), or gives its number.
func ICMPTypeName(v6 bool, typ uint32) string {
	names := icmpv4Names
	if v6 {
		names = icmpv6Names
	}
	if n, ok := names[typ]; ok {
		return n
	}
	return "Type" + strconv.Itoa(int(typ))
}
