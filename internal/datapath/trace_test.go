package datapath

import (
	"fmt"
	"maps"
	"testing"
	"time"

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

// traceKey is what identifies a trace in TestTraceEventsOnRealTraffic: the
// endpoint whose hook reported it, where the packet went, which way.
type traceKey struct {
	ep    uint32
	point event.TracePoint
	reply bool
}

// tracesOf returns the traces among evs of the flow with the given L4
// protocol and port (either end), by traceKey, and the flow's policy
// verdicts.
func tracesOf(evs []event.Event, proto resolved.Protocol, port uint16) (map[traceKey]int, int) {
	traces, verdicts := map[traceKey]int{}, 0
	for _, ev := range evs {
		if ev.Proto != proto || (port != 0 && ev.SrcPort != port && ev.DstPort != port) {
			continue
		}
		switch ev.Type {
		case event.TypeTrace:
			traces[traceKey{ev.EndpointID, ev.TracePoint, ev.IsReply}]++
		case event.TypePolicyVerdict:
			verdicts++
		}
	}
	return traces, verdicts
}

// TestTraceEventsOnRealTraffic: real UDP, TCP and ICMP between two pod
// namespaces give the trace events Cilium's datapath gives, per endpoint:
// through the node's stack (local delivery off) each pod's egress traces
// to-stack and its ingress to-endpoint; with local delivery the source's
// hook traces from-endpoint for itself and to-endpoint for the destination.
// Replies are marked, and a connection's traces stay a few however many
// packets it carries (aggregation per direction: first packet, FIN).
func TestTraceEventsOnRealTraffic(t *testing.T) {
	t.Parallel()
	const a, b = 1, 2 // endpoint ids of pods 0 and 1
	for _, local := range []bool{false, true} {
		t.Run(fmt.Sprintf("local-delivery=%v", local), func(t *testing.T) {
			t.Parallel()
			tp, dp := localDeliveryNode(t, 2, !local, func(tp *topology) State { return e2eState(tp, []uint16{8080}, true) })
			tp.listenTCP(1, 8080)
			tp.listenUDP(1, 5353)
			events := eventsOf(t, dp)
			// The first packets resolve the node's neighbour entries through
			// the stack; ICMP echo is one flow (one echo id) from then on.
			for range 2 {
				if err := tp.ping(0, 1); err != nil {
					t.Fatalf("ping: %v", err)
				}
				if err := tp.udpExchange(0, 1, 5353); err != nil {
					t.Fatalf("udp: %v", err)
				}
			}
			out, in := event.ToStack, event.ToEndpoint
			if local {
				out = event.FromEndpoint
			}
			pings, _ := tracesOf(drainEvents(events), resolved.ProtoICMP, 0)
			for _, k := range []traceKey{{a, event.ToEndpoint, true}, {b, event.ToEndpoint, false}} {
				if pings[k] == 0 {
					t.Errorf("ICMP echo: no trace %+v among %v", k, pings)
				}
			}

			if err := tp.udpExchange(0, 1, 5353); err != nil {
				t.Fatalf("udp: %v", err)
			}
			udp, verdicts := tracesOf(drainEvents(events), resolved.ProtoUDP, 5353)
			want := map[traceKey]int{{a, out, false}: 1, {b, in, false}: 1, {b, out, true}: 1, {a, in, true}: 1}
			if !maps.Equal(udp, want) || verdicts != 2 {
				t.Errorf("UDP request and reply: traces %v and %d policy verdicts, want %v and 2 (one per endpoint)", udp, verdicts, want)
			}

			c, err := tp.dialTCP(0, 1, 8080)
			if err != nil {
				t.Fatal(err)
			}
			const rounds = 30
			for i := range rounds {
				if err := roundTrip(c, fmt.Sprint("round ", i)); err != nil {
					t.Fatalf("round %d: %v", i, err)
				}
			}
			c.Close()
			time.Sleep(200 * time.Millisecond) // the FINs
			tcp, _ := tracesOf(drainEvents(events), resolved.ProtoTCP, 8080)
			total := 0
			for _, n := range tcp {
				total += n
			}
			for _, k := range []traceKey{{a, out, false}, {b, in, false}, {b, out, true}, {a, in, true}} {
				if tcp[k] == 0 {
					t.Errorf("TCP connection: no trace %+v among %v", k, tcp)
				}
			}
			t.Logf("TCP connection of %d round trips: traces %v", rounds, tcp)
			// Per endpoint and direction: the first packet, FIN (RST).
			if total > 12 {
				t.Errorf("TCP connection of %d round trips: %d traces %v, want at most 12 (aggregated)", rounds, total, tcp)
			}
		})
	}
}
