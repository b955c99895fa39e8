package datapath

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// The established fast path (fast_established in bpf/datapath.c) takes
// IPv4 and IPv6 TCP/UDP packets of a tracked flow without reading the endpoint
// record or the policy. These tests hold it to the full path's decisions.

// establishTCP runs a handshake for an ingress flow from peerA to the pod
// on port and returns the forward packet (flags ACK) and its reply.
func establishTCP(t *testing.T, dp *Datapath, port uint16) (fwd, reply packet) {
	t.Helper()
	fwd = packet{src: peerA, dst: podAddr, proto: resolved.ProtoTCP, sport: flowPort(), dport: port, tcpFlags: 0x02}
	reply = packet{src: podAddr, dst: peerA, proto: resolved.ProtoTCP, sport: port, dport: fwd.sport, tcpFlags: 0x12}
	if run(t, dp, resolved.Ingress, fwd) != tcActOK || run(t, dp, resolved.Egress, reply) != tcActOK {
		t.Fatal("handshake dropped")
	}
	fwd.tcpFlags, reply.tcpFlags = 0x18, 0x18 // PSH|ACK: recorded once, then the fast path applies
	if run(t, dp, resolved.Ingress, fwd) != tcActOK || run(t, dp, resolved.Egress, reply) != tcActOK {
		t.Fatal("first data dropped")
	}
	return fwd, reply
}

func forwarded(t *testing.T, dp *Datapath, dir resolved.Direction) uint64 {
	t.Helper()
	m, err := dp.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	return m.Dir(dir).Forwarded.Packets
}

// fast is how many packets of a direction the fast path passed.
func fast(t *testing.T, dp *Datapath, dir resolved.Direction) uint64 {
	t.Helper()
	m, err := dp.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	return m.Dir(dir).Fast.Packets
}

func TestFastPathPassesAndCountsEstablished(t *testing.T) {
	dp, _ := setupFixture(t)
	fwd, reply := establishTCP(t, dp, 80)
	in, out := forwarded(t, dp, resolved.Ingress), forwarded(t, dp, resolved.Egress)
	fin, fout := fast(t, dp, resolved.Ingress), fast(t, dp, resolved.Egress)
	for range 3 {
		if run(t, dp, resolved.Ingress, fwd) != tcActOK || run(t, dp, resolved.Egress, reply) != tcActOK {
			t.Fatal("established packet dropped")
		}
	}
	for _, c := range []struct {
		what      string
		got, want uint64
	}{
		{"ingress forwarded", forwarded(t, dp, resolved.Ingress) - in, 3},
		{"egress forwarded", forwarded(t, dp, resolved.Egress) - out, 3},
		{"ingress fast", fast(t, dp, resolved.Ingress) - fin, 3},
		{"egress fast", fast(t, dp, resolved.Egress) - fout, 3},
	} {
		if c.got != c.want {
			t.Errorf("%s +%d, want +%d", c.what, c.got, c.want)
		}
	}
	// The same flow's packet with IPv4 options takes the full path: same
	// verdict.
	opt := fwd
	opt.ipOptions = []byte{1, 1, 1, 0} // NOP NOP NOP EOL
	if run(t, dp, resolved.Ingress, opt) != tcActOK {
		t.Fatal("established packet with IP options dropped")
	}
	// A forward packet seen on the wrong hook (the pod sending as its peer)
	// is no part of the flow: the egress policy decides it as new (egress
	// is not enforced here), untracked, and the flow's entry stays as it is.
	if run(t, dp, resolved.Egress, fwd) != tcActOK {
		t.Fatal("unenforced egress dropped")
	}
	if run(t, dp, resolved.Ingress, fwd) != tcActOK || run(t, dp, resolved.Egress, reply) != tcActOK {
		t.Fatal("flow broken by a packet seen the wrong way")
	}
	flows, err := dp.Conntrack()
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != 1 || flows[0].Src != peerA || flows[0].SrcPort != fwd.sport || flows[0].Direction != resolved.Ingress {
		t.Fatalf("conntrack %+v, want the one ingress flow from %s:%d", flows, peerA, fwd.sport)
	}
}

// TestConntrackKeyIsCanonical: whichever end sorts lower, both directions
// of a flow share one entry that remembers the original direction, on the
// fast path and the full one alike.
func TestConntrackKeyIsCanonical(t *testing.T) {
	dp, _ := setupFixture(t)
	// Egress is not enforced: the pod may open flows to a peer that sorts
	// below it (peerA) and to one above it (worldIP), over IPv4 and IPv6.
	for _, peer := range []netip.Addr{peerA, worldIP, peerA6, netip.MustParseAddr("fd00:2::7")} {
		podAddr := podAddr
		if peer.Is6() {
			podAddr = podAddr6
		}
		out := packet{src: podAddr, dst: peer, proto: resolved.ProtoTCP, sport: flowPort(), dport: 443 + uint16(len(peer.String())), tcpFlags: 0x02}
		back := packet{src: peer, dst: podAddr, proto: resolved.ProtoTCP, sport: out.dport, dport: out.sport, tcpFlags: 0x12}
		if run(t, dp, resolved.Egress, out) != tcActOK || run(t, dp, resolved.Ingress, back) != tcActOK {
			t.Fatalf("%s: handshake dropped", peer)
		}
		out.tcpFlags, back.tcpFlags = 0x10, 0x10
		if run(t, dp, resolved.Egress, out) != tcActOK || run(t, dp, resolved.Ingress, back) != tcActOK {
			t.Fatalf("%s: established packets dropped", peer)
		}
		fout, fin := fast(t, dp, resolved.Egress), fast(t, dp, resolved.Ingress)
		if run(t, dp, resolved.Egress, out) != tcActOK || run(t, dp, resolved.Ingress, back) != tcActOK {
			t.Fatalf("%s: established packets dropped", peer)
		}
		if fast(t, dp, resolved.Egress) != fout+1 || fast(t, dp, resolved.Ingress) != fin+1 {
			t.Fatalf("%s: established packets missed the fast path", peer)
		}
		flows, err := dp.Conntrack()
		if err != nil {
			t.Fatal(err)
		}
		var mine []Flow
		for _, f := range flows {
			if f.Dst == peer || f.Src == peer {
				mine = append(mine, f)
			}
		}
		if len(mine) != 1 || mine[0].Src != podAddr || mine[0].Dst != peer || mine[0].SrcPort != out.sport ||
			mine[0].DstPort != out.dport || mine[0].Direction != resolved.Egress {
			t.Fatalf("%s: conntrack %+v, want one egress flow %s:%d -> %s:%d", peer, mine, podAddr, out.sport, peer, out.dport)
		}
	}
}

// TestFastPathRefreshesExpiry: an entry near its end is pushed out by an
// established packet.
func TestFastPathRefreshesExpiry(t *testing.T) {
	dp, _ := setupFixture(t)
	fwd, _ := establishTCP(t, dp, 80)
	now, err := dp.jiffies()
	if err != nil {
		t.Fatal(err)
	}
	var k bpfBwCtKey
	var v bpfBwCtEntry
	n := 0
	for it := dp.objs.BwConntrack.Iterate(); it.Next(&k, &v); n++ {
		v.Expires = now + 1
		if err := dp.objs.BwConntrack.Put(&k, &v); err != nil {
			t.Fatal(err)
		}
	}
	if n != 1 {
		t.Fatalf("%d conntrack entries, want 1", n)
	}
	if run(t, dp, resolved.Ingress, fwd) != tcActOK {
		t.Fatal("established packet dropped")
	}
	flows, err := dp.Conntrack()
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != 1 || flows[0].ExpiresIn < time.Hour {
		t.Fatalf("expiry not refreshed to the established lifetime: %+v", flows)
	}
}

// TestFastPathFollowsEndpointAndPolicy: the fast path skips the endpoint
// record, so every change to it must reach established flows through the
// revision: an endpoint that loses its policy fails closed, a revoked allow
// ends the flow, a new identity revalidates.
func TestFastPathFollowsEndpointAndPolicy(t *testing.T) {
	t.Run("endpoint not ready", func(t *testing.T) {
		dp, st := setupFixture(t)
		events := eventsOf(t, dp)
		fwd, reply := establishTCP(t, dp, 80)
		drainEvents(events)
		st.Endpoints = map[uint32]*resolved.EndpointPolicy{}
		if err := dp.Sync(st); err != nil {
			t.Fatal(err)
		}
		if run(t, dp, resolved.Ingress, fwd) != tcActShot || run(t, dp, resolved.Egress, reply) != tcActShot {
			t.Fatal("established flow of a not-ready endpoint passed")
		}
		if ev, ok := nextEvent(t, events); !ok || ev.Reason != event.ReasonEndpointNotReady {
			t.Fatalf("event %+v, want %s", ev, event.ReasonEndpointNotReady)
		}
	})
	t.Run("allow revoked", func(t *testing.T) {
		dp, st := setupFixture(t)
		events := eventsOf(t, dp)
		fwd, reply := establishTCP(t, dp, 80)
		drainEvents(events)
		pol := *st.Endpoints[testEP]
		pol.Ingress.Entries = pol.Ingress.Entries[1:] // drop the port-80 allow
		st.Endpoints = map[uint32]*resolved.EndpointPolicy{testEP: &pol}
		if err := dp.Sync(st); err != nil {
			t.Fatal(err)
		}
		if run(t, dp, resolved.Egress, reply) != tcActShot {
			t.Fatal("reply of a revoked flow passed")
		}
		if ev, ok := nextEvent(t, events); !ok || ev.Reason != event.ReasonRevoked {
			t.Fatalf("event %+v, want %s", ev, event.ReasonRevoked)
		}
		if run(t, dp, resolved.Ingress, fwd) != tcActShot {
			t.Fatal("revoked flow passed")
		}
	})
	t.Run("identity change", func(t *testing.T) {
		dp, _ := setupFixture(t)
		establishTCP(t, dp, 80)
		rev := dp.Revision()
		dp.mu.Lock()
		es := dp.endpoints[testEP]
		es.ep.Identity = idC
		err := dp.writeEndpointNow(es)
		dp.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		if dp.Revision() == rev {
			t.Fatal("an endpoint record changed and the revision stayed")
		}
	})
}

// TestFastPathLeavesRedirectsToTheFullPath: an established L7 flow keeps
// its proxy mark on every forward packet (hairpinned to the proxy at the
// destination's hook), replies carry none.
func TestFastPathLeavesRedirectsToTheFullPath(t *testing.T) {
	dp, _ := setupFixture(t)
	fwd := packet{src: peerA, dst: podAddr, proto: resolved.ProtoTCP, sport: flowPort(), dport: 9090, tcpFlags: 0x02}
	reply := packet{src: podAddr, dst: peerA, proto: resolved.ProtoTCP, sport: 9090, dport: fwd.sport, tcpFlags: 0x12}
	ctxIn := make([]byte, skbCtxSize)
	ctxOut := make([]byte, skbCtxSize)
	for i := range 3 { // handshake, first data, then what the fast path would take
		for _, c := range []struct {
			prog    *ebpf.Program
			p       packet
			wantRet uint32
			want    uint32
		}{{dp.objs.BulwarkToPod, fwd, tcActRedirect, ProxyMark(15001)}, {dp.objs.BulwarkFromPod, reply, tcActOK, 0}} {
			ret, err := c.prog.Run(&ebpf.RunOptions{Data: c.p.frame(), Context: ctxIn, ContextOut: ctxOut})
			if err != nil {
				t.Fatal(err)
			}
			if mark := binary.NativeEndian.Uint32(ctxOut[8:]); ret != c.wantRet || mark != c.want {
				t.Fatalf("packet %d: verdict %d mark %#x, want verdict %d with mark %#x", i, ret, mark, c.wantRet, c.want)
			}
		}
		fwd.tcpFlags, reply.tcpFlags = 0x18, 0x18
	}
}

// TestFastPathUDPReplies: replies of a tracked UDP flow pass even where
// the policy denies the peer (B is denied on egress).
func TestFastPathUDPReplies(t *testing.T) {
	dp, _ := setupFixture(t)
	req := packet{src: peerB, dst: podAddr, proto: resolved.ProtoUDP, sport: flowPort(), dport: 53}
	resp := packet{src: podAddr, dst: peerB, proto: resolved.ProtoUDP, sport: 53, dport: req.sport}
	for i := range 3 {
		if run(t, dp, resolved.Ingress, req) != tcActOK || run(t, dp, resolved.Egress, resp) != tcActOK {
			t.Fatalf("exchange %d dropped", i)
		}
	}
	// Untracked, the same response is B's L3 deny.
	resp.dport = flowPort()
	if run(t, dp, resolved.Egress, resp) != tcActShot {
		t.Fatal("untracked packet to a denied peer passed")
	}
}
