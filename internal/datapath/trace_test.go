package datapath

import (
	"fmt"
	"testing"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// expectTrace reads the next event and fails unless it is the trace of p
// at point, in the reply direction or not, seen by the hook for dir.
func expectTrace(t *testing.T, events <-chan event.Event, step string, dir resolved.Direction, point event.TracePoint, reply bool, p packet) {
	t.Helper()
	ev, ok := nextEvent(t, events)
	if !ok || ev.Type != event.TypeTrace || ev.Verdict != event.Forwarded || ev.TracePoint != point || ev.IsReply != reply ||
		ev.Direction != dir || ev.Src != p.src || ev.Dst != p.dst || ev.Proto != p.proto || ev.TCPFlags != p.tcpFlags {
		t.Fatalf("%s: event %+v (ok %v); want a %s trace (reply %v) of %v %s:%d -> %s:%d flags %#x",
			step, ev, ok, point, reply, p.proto, p.src, p.sport, p.dst, p.dport, p.tcpFlags)
	}
}

// expectQuiet sends a packet that drops and fails unless its drop is the
// next event: nothing was emitted for the packets before it.
func expectQuiet(t *testing.T, dp *Datapath, events <-chan event.Event, step string) {
	t.Helper()
	marker := packet{src: podAddr, dst: worldIP, proto: resolved.ProtoTCP, sport: flowPort(), dport: 443, tcpFlags: 0x02}
	if ret := run(t, dp, resolved.Egress, marker); ret != tcActShot {
		t.Fatalf("%s: marker packet returned %d", step, ret)
	}
	if ev, ok := nextEvent(t, events); !ok || ev.Type != event.TypeDrop || ev.Dst != worldIP || ev.SrcPort != marker.sport {
		t.Fatalf("%s: event %+v (ok %v), want the marker's drop: the packets before it emitted something", step, ev, ok)
	}
}

// TestProgTraceAggregation: trace events as Cilium's monitor aggregation
// gives them, per connection and direction: the first packet (after its
// policy verdict), the first reply, and the packets that add FIN or RST;
// no other packet of the connection emits anything, whatever its count.
// The pod's egress traces to-stack here (no local pod to deliver to), its
// ingress to-endpoint; replies are marked. TCP, UDP and ICMP echo alike.
func TestProgTraceAggregation(t *testing.T) {
	dp := openTest(t, Sizes{Policy: 4096, IPCache: 1024, IdentitySelectors: 1024, Conntrack: 4096})
	registerEndpoint(t, dp, Endpoint{ID: testEP, IfIndex: 1, Identity: idPod})
	if err := dp.Sync(fixtureState()); err != nil {
		t.Fatal(err)
	}
	events := eventsOf(t, dp)
	reply := func(p packet) packet {
		p.src, p.dst, p.sport, p.dport = p.dst, p.src, p.dport, p.sport
		return p
	}
	send := func(step string, dir resolved.Direction, p packet) {
		t.Helper()
		if ret := run(t, dp, dir, p); ret != tcActOK {
			t.Fatalf("%s: returned %d, want pass", step, ret)
		}
	}
	newFlow := func(step string, p packet) {
		t.Helper()
		send(step, resolved.Egress, p)
		if ev, ok := nextEvent(t, events); !ok || ev.Type != event.TypePolicyVerdict || ev.Verdict != event.Forwarded || ev.Dst != p.dst {
			t.Fatalf("%s: event %+v (ok %v), want the new flow's policy verdict", step, ev, ok)
		}
		expectTrace(t, events, step, resolved.Egress, event.ToStack, false, p)
	}

	t.Run("udp", func(t *testing.T) {
		req := packet{src: podAddr, dst: peerA, proto: resolved.ProtoUDP, sport: flowPort(), dport: 5353}
		newFlow("first datagram", req)
		for i := range 5 {
			send(fmt.Sprint("datagram ", i), resolved.Egress, req)
		}
		send("first reply", resolved.Ingress, reply(req))
		expectTrace(t, events, "first reply", resolved.Ingress, event.ToEndpoint, true, reply(req))
		for i := range 5 {
			send(fmt.Sprint("reply ", i), resolved.Ingress, reply(req))
			send(fmt.Sprint("datagram ", i), resolved.Egress, req)
		}
		expectQuiet(t, dp, events, "udp after the first of each direction")
	})

	t.Run("tcp", func(t *testing.T) {
		syn := packet{src: podAddr, dst: peerA, proto: resolved.ProtoTCP, sport: flowPort(), dport: 443, tcpFlags: 0x02}
		with := func(p packet, flags uint8) packet { p.tcpFlags = flags; return p }
		newFlow("SYN", syn)
		send("SYN-ACK", resolved.Ingress, with(reply(syn), 0x12))
		expectTrace(t, events, "SYN-ACK", resolved.Ingress, event.ToEndpoint, true, with(reply(syn), 0x12))
		for i := range 5 {
			send(fmt.Sprint("ACK ", i), resolved.Egress, with(syn, 0x18))
			send(fmt.Sprint("reply ACK ", i), resolved.Ingress, with(reply(syn), 0x18))
		}
		expectQuiet(t, dp, events, "tcp data")
		send("FIN", resolved.Egress, with(syn, 0x11))
		expectTrace(t, events, "FIN", resolved.Egress, event.ToStack, false, with(syn, 0x11))
		send("reply FIN", resolved.Ingress, with(reply(syn), 0x11))
		expectTrace(t, events, "reply FIN", resolved.Ingress, event.ToEndpoint, true, with(reply(syn), 0x11))
		send("last ACK", resolved.Egress, with(syn, 0x10))
		send("FIN again", resolved.Egress, with(syn, 0x11))
		expectQuiet(t, dp, events, "tcp after both FINs")
		send("RST", resolved.Egress, with(syn, 0x04))
		expectTrace(t, events, "RST", resolved.Egress, event.ToStack, false, with(syn, 0x04))
		// The tuple reused by a new connection is traced anew.
		send("SYN again", resolved.Egress, syn)
		expectTrace(t, events, "SYN reusing the tuple", resolved.Egress, event.ToStack, false, syn)
	})

	t.Run("icmp echo", func(t *testing.T) {
		nextPort++
		req := packet{src: podAddr, dst: peerA, proto: resolved.ProtoICMP, icmpType: 8, icmpID: nextPort}
		newFlow("echo request", req)
		send("echo request again", resolved.Egress, req)
		rep := reply(req)
		rep.icmpType = 0
		send("echo reply", resolved.Ingress, rep)
		expectTrace(t, events, "echo reply", resolved.Ingress, event.ToEndpoint, true, rep)
		send("echo reply again", resolved.Ingress, rep)
		expectQuiet(t, dp, events, "icmp after the first of each direction")
	})
}
