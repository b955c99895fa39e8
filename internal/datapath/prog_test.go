package datapath

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

var (
	podAddr  = netip.MustParseAddr("10.0.1.1")
	podAddr6 = netip.MustParseAddr("fd00:1::1")
	peerA    = netip.MustParseAddr("10.0.0.1") // identity 1000
	peerB    = netip.MustParseAddr("10.0.0.2") // identity 1001
	peerC    = netip.MustParseAddr("10.0.0.3") // identity 1002
	peerA6   = netip.MustParseAddr("fd00::1")  // identity 1000
	peerB6   = netip.MustParseAddr("fd00::2")  // identity 1001
	worldIP  = netip.MustParseAddr("192.0.2.7")
)

const (
	idPod   identity.NumericIdentity = 2000
	idA     identity.NumericIdentity = 1000
	idB     identity.NumericIdentity = 1001
	idC     identity.NumericIdentity = 1002
	testEP  uint32                   = 7
	selAB   resolved.SelectorID      = 1 // A, B
	selB    resolved.SelectorID      = 2 // B
	selW    resolved.SelectorID      = 3 // world
	selABC  resolved.SelectorID      = 4 // A, B, C
	selNone resolved.SelectorID      = 5 // nobody
)

func ref(name string) []resolved.PolicyRef {
	return []resolved.PolicyRef{{Kind: "CiliumNetworkPolicy", Namespace: "ns", Name: name}}
}

func fixtureState() State {
	sels := fixtureSelectors{
		selAB:  {idA, idB},
		selB:   {idB},
		selW:   {identity.World},
		selABC: {idA, idB, idC},
	}
	pol := &resolved.EndpointPolicy{
		Identity: idPod,
		Ingress: resolved.DirectionPolicy{
			Enforced: true,
			Entries: []resolved.Entry{
				{Peer: selAB, Proto: resolved.ProtoTCP, PortLo: 80, PortHi: 80, Verdict: resolved.Allow, Origin: ref("web")},
				{Peer: selABC, Proto: resolved.ProtoTCP, PortLo: 8000, PortHi: 8100, Verdict: resolved.Allow, Origin: ref("range")},
				{Peer: selB, Proto: resolved.ProtoTCP, PortLo: 8080, PortHi: 8080, Verdict: resolved.Deny, Origin: ref("deny-b")},
				{Peer: selAB, Proto: resolved.ProtoTCP, PortLo: 9090, PortHi: 9090, Verdict: resolved.Redirect, Origin: ref("l7"),
					L7: &resolved.L7Rules{HTTP: []resolved.HTTPRule{{Method: "GET"}}}},
				{Peer: selAB, Proto: resolved.ProtoTCP, PortLo: 9091, PortHi: 9091, Verdict: resolved.Redirect, Origin: ref("l7-noproxy"),
					L7: &resolved.L7Rules{HTTP: []resolved.HTTPRule{{Method: "GET"}}}},
				{Peer: selB, Proto: resolved.ProtoAny, PortLo: 53, PortHi: 53, Verdict: resolved.Allow, Origin: ref("dns")},
				{Peer: selAB, Proto: resolved.ProtoICMP, Verdict: resolved.Allow, Origin: ref("ping")},
				{Peer: selAB, Proto: resolved.ProtoICMPv6, Verdict: resolved.Allow, Origin: ref("ping")},
				{Peer: selABC, Proto: resolved.ProtoSCTP, PortLo: 5000, PortHi: 5000, Verdict: resolved.Allow, Origin: ref("sctp")},
				{Peer: selNone, Proto: resolved.ProtoAny, Verdict: resolved.Allow, Origin: ref("nobody")},
				{Peer: selABC, Proto: resolved.ProtoTCP, PortLo: 8090, PortHi: 8090, Verdict: resolved.AuditDeny, Origin: ref("audit-8090")},
				{Peer: selAB, Proto: resolved.ProtoTCP, PortLo: 7000, PortHi: 7000, Verdict: resolved.AuditDeny, Origin: ref("audit-7000")},
				{Peer: selB, Proto: resolved.ProtoTCP, PortLo: 8080, PortHi: 8080, Verdict: resolved.AuditDeny, Origin: ref("audit-8080")},
				// audit-mode denies of redirected ports: in the redirect's
				// own table slot, and under another selector
				{Peer: selAB, Proto: resolved.ProtoTCP, PortLo: 9090, PortHi: 9090, Verdict: resolved.AuditDeny, Origin: ref("audit-9090")},
				{Peer: selAB, Proto: resolved.ProtoTCP, PortLo: 9093, PortHi: 9093, Verdict: resolved.Redirect, Origin: ref("l7"),
					L7: &resolved.L7Rules{HTTP: []resolved.HTTPRule{{Method: "GET"}}}},
				{Peer: selB, Proto: resolved.ProtoTCP, PortLo: 9093, PortHi: 9093, Verdict: resolved.AuditDeny, Origin: ref("audit-9093")},
			},
			Selecting: ref("web"),
		},
		Egress: resolved.DirectionPolicy{
			Enforced: false,
			Entries: []resolved.Entry{
				{Peer: selW, Proto: resolved.ProtoTCP, PortLo: 443, PortHi: 443, Verdict: resolved.Deny, Origin: ref("no-world-tls")},
				{Peer: selB, Verdict: resolved.Deny, Origin: ref("isolate-b")}, // L3-only deny
				{Peer: selABC, Proto: resolved.ProtoTCP, PortLo: 7001, PortHi: 7001, Verdict: resolved.AuditDeny, Origin: ref("audit-7001")},
			},
		},
	}
	return State{
		Endpoints: map[uint32]*resolved.EndpointPolicy{testEP: pol},
		Selectors: sels,
		IPCache: map[netip.Prefix]identity.NumericIdentity{
			netip.PrefixFrom(peerA, 32):   idA,
			netip.PrefixFrom(peerB, 32):   idB,
			netip.PrefixFrom(peerC, 32):   idC,
			netip.PrefixFrom(peerA6, 128): idA,
			netip.PrefixFrom(peerB6, 128): idB,
			netip.PrefixFrom(podAddr, 32): idPod,
		},
		Revision: 1,
		ProxyPort: func(epID uint32, dir resolved.Direction, e *resolved.Entry) uint16 {
			if e.Origin[0].Name == "l7-noproxy" {
				return 0 // no proxy for this rule: its flows drop
			}
			return 15001
		},
	}
}

func setupFixture(t *testing.T) (*Datapath, State) {
	dp := openTest(t, Sizes{Policy: 4096, IPCache: 1024, IdentitySelectors: 1024, Conntrack: 4096})
	registerEndpoint(t, dp, Endpoint{ID: testEP, IfIndex: 1, Identity: idPod})
	st := fixtureState()
	if err := dp.Sync(st); err != nil {
		t.Fatal(err)
	}
	return dp, st
}

type verdictCase struct {
	name string
	dir  resolved.Direction
	pkt  packet
	want resolved.Verdict
}

var nextPort uint16 = 20000

// flowPort gives each case its own source port so that conntrack of one
// case never decides another.
func flowPort() uint16 { nextPort++; return nextPort }

func TestProgVerdictsMatchReference(t *testing.T) {
	dp, st := setupFixture(t)
	events := eventsOf(t, dp)
	tcp := func(src netip.Addr, dport uint16) packet {
		dst := podAddr
		if src.Is6() {
			dst = podAddr6
		}
		return packet{src: src, dst: dst, proto: resolved.ProtoTCP, sport: flowPort(), dport: dport, tcpFlags: 0x02}
	}
	l4 := func(src netip.Addr, proto resolved.Protocol, dport uint16) packet {
		p := tcp(src, dport)
		p.proto, p.tcpFlags = proto, 0
		return p
	}
	egress := func(dst netip.Addr, proto resolved.Protocol, dport uint16) packet {
		return packet{src: podAddr, dst: dst, proto: proto, sport: flowPort(), dport: dport, tcpFlags: 0x02}
	}
	icmp := func(src, dst netip.Addr, proto resolved.Protocol, typ uint8) packet {
		nextPort++
		return packet{src: src, dst: dst, proto: proto, icmpType: typ, icmpID: nextPort}
	}
	cases := []verdictCase{
		{"allow tcp 80 from A", resolved.Ingress, tcp(peerA, 80), resolved.Allow},
		{"allow tcp 80 from B v6", resolved.Ingress, tcp(peerB6, 80), resolved.Allow},
		{"default deny tcp 81 from A", resolved.Ingress, tcp(peerA, 81), resolved.Deny},
		{"default deny tcp 80 from C", resolved.Ingress, tcp(peerC, 80), resolved.Deny},
		{"default deny from world", resolved.Ingress, tcp(worldIP, 80), resolved.Deny},
		{"range low edge", resolved.Ingress, tcp(peerC, 8000), resolved.Allow},
		{"range inside", resolved.Ingress, tcp(peerA, 8079), resolved.Allow},
		{"range high edge", resolved.Ingress, tcp(peerC, 8100), resolved.Allow},
		{"range past high edge", resolved.Ingress, tcp(peerC, 8101), resolved.Deny},
		{"deny wins in range (B 8080)", resolved.Ingress, tcp(peerB, 8080), resolved.Deny},
		{"A 8080 allowed by range", resolved.Ingress, tcp(peerA, 8080), resolved.Allow},
		{"redirect 9090", resolved.Ingress, tcp(peerA, 9090), resolved.Redirect},
		{"redirect without a proxy 9091 drops", resolved.Ingress, tcp(peerA, 9091), resolved.Deny},
		{"audit deny flags a redirect (A 9090, same slot)", resolved.Ingress, tcp(peerA, 9090), resolved.Redirect},
		{"redirect not flagged (A 9093)", resolved.Ingress, tcp(peerA, 9093), resolved.Redirect},
		{"audit deny flags a redirect (B 9093, other selector)", resolved.Ingress, tcp(peerB, 9093), resolved.Redirect},
		{"proto any port 53 udp", resolved.Ingress, l4(peerB, resolved.ProtoUDP, 53), resolved.Allow},
		{"proto any port 53 tcp", resolved.Ingress, l4(peerB, resolved.ProtoTCP, 53), resolved.Allow},
		{"proto any port 53 sctp", resolved.Ingress, l4(peerB, resolved.ProtoSCTP, 53), resolved.Allow},
		{"proto any not for A", resolved.Ingress, l4(peerA, resolved.ProtoUDP, 53), resolved.Deny},
		{"udp 80 not tcp rule", resolved.Ingress, l4(peerA, resolved.ProtoUDP, 80), resolved.Deny},
		{"sctp 5000", resolved.Ingress, l4(peerC, resolved.ProtoSCTP, 5000), resolved.Allow},
		{"sctp 5001", resolved.Ingress, l4(peerC, resolved.ProtoSCTP, 5001), resolved.Deny},
		{"icmp echo from A", resolved.Ingress, icmp(peerA, podAddr, resolved.ProtoICMP, 8), resolved.Allow},
		{"icmp echo from C", resolved.Ingress, icmp(peerC, podAddr, resolved.ProtoICMP, 8), resolved.Deny},
		{"icmpv6 echo from A", resolved.Ingress, icmp(peerA6, podAddr6, resolved.ProtoICMPv6, 128), resolved.Allow},
		{"egress default allow", resolved.Egress, egress(peerA, resolved.ProtoTCP, 443), resolved.Allow},
		{"egress deny world 443", resolved.Egress, egress(worldIP, resolved.ProtoTCP, 443), resolved.Deny},
		{"egress world 80 allowed", resolved.Egress, egress(worldIP, resolved.ProtoTCP, 80), resolved.Allow},
		{"egress L3 deny B tcp", resolved.Egress, egress(peerB, resolved.ProtoTCP, 1234), resolved.Deny},
		{"egress L3 deny B udp", resolved.Egress, egress(peerB, resolved.ProtoUDP, 9), resolved.Deny},
		{"egress L3 deny B icmp", resolved.Egress, icmp(podAddr, peerB, resolved.ProtoICMP, 8), resolved.Deny},
		{"egress L3 deny B gre", resolved.Egress, packet{src: podAddr, dst: peerB, proto: 47}, resolved.Deny},
		{"audit deny flags an allow (C 8090)", resolved.Ingress, tcp(peerC, 8090), resolved.AuditDeny},
		{"audit deny passes nothing default deny drops (A 7000)", resolved.Ingress, tcp(peerA, 7000), resolved.Deny},
		{"enforcing deny wins over audit deny (B 8080)", resolved.Ingress, tcp(peerB, 8080), resolved.Deny},
		{"egress audit deny under default allow (A 7001)", resolved.Egress, egress(peerA, resolved.ProtoTCP, 7001), resolved.AuditDeny},
		{"egress deny wins over audit (B 7001)", resolved.Egress, egress(peerB, resolved.ProtoTCP, 7001), resolved.Deny},
	}
	comp := dp.Compiled()
	pol := st.Endpoints[testEP]
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			peerAddr := c.pkt.src
			if c.dir == resolved.Egress {
				peerAddr = c.pkt.dst
			}
			peer := identity.World
			for p, id := range st.IPCache {
				if p.Contains(peerAddr) {
					peer = id
				}
			}
			port := c.pkt.dport
			goRef := pol.Dir(c.dir).Lookup(st.Selectors, peer, c.pkt.proto, port)
			dpRef := comp.ReferenceLookup(testEP, c.dir, peer, c.pkt.proto, port)
			wantResolved := c.want
			if dpRef.Reason == event.ReasonProxyUnavailable {
				wantResolved = resolved.Redirect // the engine redirects; without a proxy the datapath drops
			}
			if goRef.Verdict != wantResolved || dpRef.Verdict != c.want {
				t.Fatalf("reference verdicts: resolved %s, datapath reference %s; want %s", goRef.Verdict, dpRef.Verdict, c.want)
			}
			ret := run(t, dp, c.dir, c.pkt)
			wantRet := uint32(tcActOK)
			switch c.want {
			case resolved.Deny:
				wantRet = tcActShot
			case resolved.Redirect:
				wantRet = tcActRedirect // ingress: hairpinned to the proxy
			}
			if ret != wantRet {
				t.Fatalf("kernel returned %d, want %d", ret, wantRet)
			}
			ev, ok := nextEvent(t, events)
			if !ok {
				t.Fatal("no event")
			}
			if ev.EndpointID != testEP || ev.Direction != c.dir || ev.Proto != c.pkt.proto || ev.Src != c.pkt.src || ev.Dst != c.pkt.dst {
				t.Fatalf("event does not describe the packet: %+v", ev)
			}
			if dpRef.Audited != (len(goRef.Audit) > 0) {
				t.Fatalf("reference audit flags: datapath %v, resolved %d audit entries", dpRef.Audited, len(goRef.Audit))
			}
			wantVerdict := map[resolved.Verdict]event.Verdict{resolved.Allow: event.Forwarded, resolved.Deny: event.Dropped, resolved.Redirect: event.Redirected, resolved.AuditDeny: event.Audit}[c.want]
			if dpRef.Audited {
				wantVerdict = event.Audit // to the proxy, flagged
				if got, want := dp.RulePolicies(dpRef.RuleID), goRef.AuditPolicies(pol.Dir(c.dir)); !slices.Equal(got, want) || len(want) == 0 {
					t.Fatalf("audited redirect: rule %d names %v, want the audit policies %v", dpRef.RuleID, got, want)
				}
			}
			if ev.Verdict != wantVerdict {
				t.Fatalf("event verdict %s, want %s", ev.Verdict, wantVerdict)
			}
			if ev.RuleID != dpRef.RuleID || ev.Reason != dpRef.Reason {
				t.Fatalf("event rule %d reason %s, reference rule %d reason %s", ev.RuleID, ev.Reason, dpRef.RuleID, dpRef.Reason)
			}
			if c.want == resolved.Redirect && ev.ProxyPort != 15001 {
				t.Fatalf("redirect proxy port %d", ev.ProxyPort)
			}
			// The rule's policies are among the reference decision's.
			refPols := map[resolved.PolicyRef]bool{}
			for _, r := range goRef.Policies(pol.Dir(c.dir)) {
				refPols[r] = true
			}
			for _, r := range goRef.AuditPolicies(pol.Dir(c.dir)) {
				refPols[r] = true
			}
			for _, r := range dp.RulePolicies(ev.RuleID) {
				if !refPols[r] {
					t.Fatalf("rule %d names %s, not behind the reference decision %v", ev.RuleID, r, goRef.Policies(pol.Dir(c.dir)))
				}
			}
			if !goRef.Default && len(dp.RulePolicies(ev.RuleID)) == 0 {
				t.Fatalf("an entry decided but rule %d names no policy", ev.RuleID)
			}
			// The rule's match type is the shape of an entry that decided
			// (no fixture selector is a wildcard); none for a default.
			mt := dp.RuleMatchType(ev.RuleID)
			if goRef.Default != (mt == event.MatchNone) {
				t.Fatalf("rule %d match type %s, default decision %v", ev.RuleID, mt, goRef.Default)
			}
			if !goRef.Default && !slices.ContainsFunc(append(goRef.Matched, goRef.Audit...), func(e *resolved.Entry) bool { return entryMatchType(e, false) == mt }) {
				t.Fatalf("rule %d match type %s is the shape of no deciding entry %+v", ev.RuleID, mt, goRef.Matched)
			}
			wantPeer := peer
			gotPeer := ev.SrcIdentity
			if c.dir == resolved.Egress {
				gotPeer = ev.DstIdentity
			}
			if gotPeer != wantPeer {
				t.Fatalf("event peer identity %d, want %d", gotPeer, wantPeer)
			}
			// A passed packet that starts a tracked flow is traced too, as
			// Cilium's first packet, where it went: the pod (or the proxy)
			// at ingress, the node's stack at egress (no local pod here).
			if ret == tcActShot {
				return
			}
			wantPoint := event.ToEndpoint
			switch {
			case c.want == resolved.Redirect:
				wantPoint = event.ToProxy
			case c.dir == resolved.Egress:
				wantPoint = event.ToStack
			}
			tr, ok := nextEvent(t, events)
			if !ok || tr.Type != event.TypeTrace || tr.TracePoint != wantPoint || tr.Verdict != event.Forwarded || tr.IsReply ||
				tr.Src != c.pkt.src || tr.Dst != c.pkt.dst || tr.Proto != c.pkt.proto || tr.RuleID != ev.RuleID || tr.Direction != c.dir {
				t.Fatalf("trace of the new flow: %+v (ok %v), want %s of the packet", tr, ok, wantPoint)
			}
		})
	}
}

func TestNonIPAndNeighbourDiscoveryPass(t *testing.T) {
	dp := openTest(t, Sizes{Policy: 1024})
	// No endpoint record at all: IP is dropped, ARP and ND pass.
	if ret := run(t, dp, resolved.Ingress, packet{ethType: 0x0806}); ret != tcActOK {
		t.Fatalf("ARP: %d", ret)
	}
	for _, typ := range []uint8{133, 134, 135, 136, 137} {
		p := packet{src: peerA6, dst: podAddr6, proto: resolved.ProtoICMPv6, icmpType: typ}
		if ret := run(t, dp, resolved.Ingress, p); ret != tcActOK {
			t.Fatalf("ND type %d: %d", typ, ret)
		}
	}
	p := packet{src: peerA6, dst: podAddr6, proto: resolved.ProtoICMPv6, icmpType: 128}
	if ret := run(t, dp, resolved.Ingress, p); ret != tcActShot {
		t.Fatalf("echo on unknown endpoint: %d, want drop", ret)
	}
	m, err := dp.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	if m.Ingress.Dropped[event.ReasonUnknownEndpoint].Packets != 1 {
		t.Fatalf("metrics: %+v", m.Ingress)
	}
}

func TestNotReadyEndpointFailsClosed(t *testing.T) {
	dp := openTest(t, Sizes{Policy: 1024})
	registerEndpoint(t, dp, Endpoint{ID: testEP, IfIndex: 1, Identity: idPod})
	events := eventsOf(t, dp)
	st := fixtureState()
	p := packet{src: peerA, dst: podAddr, proto: resolved.ProtoTCP, sport: flowPort(), dport: 80, tcpFlags: 2}
	if ret := run(t, dp, resolved.Ingress, p); ret != tcActShot {
		t.Fatalf("not ready: %d, want drop", ret)
	}
	ev, _ := nextEvent(t, events)
	if ev.Reason != event.ReasonEndpointNotReady {
		t.Fatalf("reason %s", ev.Reason)
	}
	if err := dp.Sync(st); err != nil {
		t.Fatal(err)
	}
	if ret := run(t, dp, resolved.Ingress, p); ret != tcActOK {
		t.Fatalf("after policy: %d, want pass", ret)
	}
	// Policy gone from the state: not ready again.
	st.Endpoints = map[uint32]*resolved.EndpointPolicy{}
	if err := dp.Sync(st); err != nil {
		t.Fatal(err)
	}
	p.sport = flowPort()
	if ret := run(t, dp, resolved.Ingress, p); ret != tcActShot {
		t.Fatalf("policy removed: %d, want drop", ret)
	}
}

func TestConntrackRepliesAndRevocation(t *testing.T) {
	dp, _ := setupFixture(t)
	events := eventsOf(t, dp)
	// Ingress allowed flow A -> pod:80, the pod's reply leaves via egress.
	fwd := packet{src: peerA, dst: podAddr, proto: resolved.ProtoTCP, sport: flowPort(), dport: 80, tcpFlags: 0x02}
	reply := packet{src: podAddr, dst: peerA, proto: resolved.ProtoTCP, sport: 80, dport: fwd.sport, tcpFlags: 0x12}
	if run(t, dp, resolved.Ingress, fwd) != tcActOK || run(t, dp, resolved.Egress, reply) != tcActOK {
		t.Fatal("flow not established")
	}
	// An egress-denied reply direction still passes as a reply: B is L3
	// denied on egress, yet replies to B's allowed ingress flow pass.
	fwdB := packet{src: peerB, dst: podAddr, proto: resolved.ProtoTCP, sport: flowPort(), dport: 80, tcpFlags: 0x02}
	replyB := packet{src: podAddr, dst: peerB, proto: resolved.ProtoTCP, sport: 80, dport: fwdB.sport, tcpFlags: 0x12}
	if run(t, dp, resolved.Ingress, fwdB) != tcActOK {
		t.Fatal("B to 80 dropped")
	}
	if run(t, dp, resolved.Egress, replyB) != tcActOK {
		t.Fatal("reply to B dropped although the flow is established")
	}
	// A new flow from the pod to B is denied (not a reply).
	if run(t, dp, resolved.Egress, packet{src: podAddr, dst: peerB, proto: resolved.ProtoTCP, sport: 80, dport: 1, tcpFlags: 2}) != tcActShot {
		t.Fatal("new egress flow to B passed")
	}
	// ICMP echo reply tracked via id.
	echo := packet{src: peerA, dst: podAddr, proto: resolved.ProtoICMP, icmpType: 8, icmpID: 4242}
	echoReply := packet{src: podAddr, dst: peerA, proto: resolved.ProtoICMP, icmpType: 0, icmpID: 4242}
	if run(t, dp, resolved.Ingress, echo) != tcActOK || run(t, dp, resolved.Egress, echoReply) != tcActOK {
		t.Fatal("echo / echo reply")
	}
	drainEvents(events)

	// Revocation: remove the allow for B on 80 (selector AB -> A only via a
	// new selector set), keep A's.
	st2 := fixtureState()
	st2.Selectors = fixtureSelectors{selAB: {idA}, selB: {idB}, selW: {identity.World}, selABC: {idA, idB, idC}}
	st2.Revision = 2
	if err := dp.Sync(st2); err != nil {
		t.Fatal(err)
	}
	fwd.tcpFlags, fwdB.tcpFlags = 0x10, 0x10
	if run(t, dp, resolved.Ingress, fwd) != tcActOK {
		t.Fatal("A's connection broken by an unrelated change")
	}
	if run(t, dp, resolved.Ingress, fwdB) != tcActShot {
		t.Fatal("B's revoked connection still passes")
	}
	var revoked bool
	for _, ev := range drainEvents(events) {
		if ev.Reason == event.ReasonRevoked && ev.Src == peerB {
			revoked = true
		}
	}
	if !revoked {
		t.Fatal("no revocation event")
	}
	// the reply direction of the revoked flow is gone too
	if run(t, dp, resolved.Egress, replyB) != tcActShot {
		t.Fatal("reply of revoked flow passes")
	}
	// A's reply still passes.
	if run(t, dp, resolved.Egress, reply) != tcActOK {
		t.Fatal("reply of kept flow dropped")
	}
	flows, err := dp.Conntrack()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range flows {
		if f.Src == peerA && f.SrcPort == fwd.sport && f.Revision != dp.Revision() {
			t.Fatalf("kept flow not refreshed to revision %d: %+v", dp.Revision(), f)
		}
	}
}

func TestFinShortensLifetimeAndGC(t *testing.T) {
	dp, _ := setupFixture(t)
	p := packet{src: peerA, dst: podAddr, proto: resolved.ProtoTCP, sport: flowPort(), dport: 80, tcpFlags: 0x02}
	run(t, dp, resolved.Ingress, p)
	p.tcpFlags = 0x12
	run(t, dp, resolved.Ingress, p)
	flows, _ := dp.Conntrack()
	if len(flows) != 1 || flows[0].Closing || flows[0].ExpiresIn < 100e9 {
		t.Fatalf("established flow: %+v", flows)
	}
	p.tcpFlags = 0x11 // FIN|ACK
	run(t, dp, resolved.Ingress, p)
	flows, _ = dp.Conntrack()
	if len(flows) != 1 || !flows[0].Closing || flows[0].ExpiresIn > 10e9 {
		t.Fatalf("closing flow: %+v", flows)
	}
	// Expire it by hand and collect.
	var k bpfBwCtKey
	var v bpfBwCtEntry
	it := dp.objs.BwConntrack.Iterate()
	for it.Next(&k, &v) {
		v.Expires = 1
		if err := dp.objs.BwConntrack.Put(&k, &v); err != nil {
			t.Fatal(err)
		}
	}
	n, err := dp.GCConntrack()
	if err != nil || n != 1 {
		t.Fatalf("gc deleted %d, %v", n, err)
	}
	// A new connection reusing a closing tuple is tracked as new.
	p.tcpFlags = 0x02
	run(t, dp, resolved.Ingress, p)
	p.tcpFlags = 0x11
	run(t, dp, resolved.Ingress, p)
	p.tcpFlags = 0x02
	run(t, dp, resolved.Ingress, p)
	if flows, _ := dp.Conntrack(); len(flows) != 1 || flows[0].Closing {
		t.Fatalf("reused tuple: %+v", flows)
	}
}

func TestSelectorOverflowFailsClosed(t *testing.T) {
	dp := openTest(t, Sizes{Policy: 8192})
	registerEndpoint(t, dp, Endpoint{ID: testEP, IfIndex: 1, Identity: idPod})
	events := eventsOf(t, dp)
	sels := fixtureSelectors{}
	pol := &resolved.EndpointPolicy{Identity: idPod, Ingress: resolved.DirectionPolicy{Enforced: true}}
	for s := resolved.SelectorID(1); s <= MaxSelectorsPerIdentity+1; s++ {
		sels[s] = []identity.NumericIdentity{idA}
		pol.Ingress.Entries = append(pol.Ingress.Entries, resolved.Entry{Peer: s, Proto: resolved.ProtoTCP, PortLo: 80, PortHi: 80, Verdict: resolved.Allow, Origin: ref(fmt.Sprint(s))})
	}
	sels[1] = append(sels[1], idB)
	st := State{Endpoints: map[uint32]*resolved.EndpointPolicy{testEP: pol}, Selectors: sels,
		IPCache: map[netip.Prefix]identity.NumericIdentity{netip.PrefixFrom(peerA, 32): idA, netip.PrefixFrom(peerB, 32): idB}}
	if err := dp.Sync(st); err != nil {
		t.Fatal(err)
	}
	if ev, _ := nextEvent(t, events); ev.Type != event.TypeOverflow || ev.SrcIdentity != idA {
		t.Fatalf("overflow event: %+v", ev)
	}
	if run(t, dp, resolved.Ingress, packet{src: peerA, dst: podAddr, proto: resolved.ProtoTCP, sport: flowPort(), dport: 80}) != tcActShot {
		t.Fatal("overflowed identity allowed")
	}
	if ev, _ := nextEvent(t, events); ev.Reason != event.ReasonTableOverflow {
		t.Fatalf("drop reason %s", ev.Reason)
	}
	if run(t, dp, resolved.Ingress, packet{src: peerB, dst: podAddr, proto: resolved.ProtoTCP, sport: flowPort(), dport: 80}) != tcActOK {
		t.Fatal("identity within bounds dropped")
	}
	m, _ := dp.Metrics()
	if m.Overflows != 1 {
		t.Fatalf("overflow metric %d", m.Overflows)
	}
}

func TestPolicyTableOverflowFailsClosed(t *testing.T) {
	dp := openTest(t, Sizes{Policy: 16})
	registerEndpoint(t, dp, Endpoint{ID: testEP, IfIndex: 1, Identity: idPod})
	st := fixtureState() // needs more than 16 entries
	if err := dp.Sync(st); err != nil {
		t.Fatal(err)
	}
	d, err := dp.DumpEndpoint(testEP)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Overflow {
		t.Fatal("endpoint not marked overflow")
	}
	if run(t, dp, resolved.Ingress, packet{src: peerA, dst: podAddr, proto: resolved.ProtoTCP, sport: flowPort(), dport: 80}) != tcActShot {
		t.Fatal("overflowed endpoint passed traffic")
	}
	if run(t, dp, resolved.Egress, packet{src: podAddr, dst: peerA, proto: resolved.ProtoTCP, sport: flowPort(), dport: 80}) != tcActShot {
		t.Fatal("overflowed endpoint passed egress traffic")
	}
}

func TestSyncIsIncrementalAndDoubleBuffered(t *testing.T) {
	dp, st := setupFixture(t)
	d1, _ := dp.DumpEndpoint(testEP)
	rev := dp.Revision()
	if err := dp.Sync(st); err != nil {
		t.Fatal(err)
	}
	d2, _ := dp.DumpEndpoint(testEP)
	if d1.TableID != d2.TableID || dp.Revision() != rev {
		t.Fatalf("an unchanged state switched tables (%d -> %d) or revision (%d -> %d)", d1.TableID, d2.TableID, rev, dp.Revision())
	}
	st2 := fixtureState()
	st2.Endpoints[testEP].Ingress.Entries = st2.Endpoints[testEP].Ingress.Entries[:1]
	if err := dp.Sync(st2); err != nil {
		t.Fatal(err)
	}
	d3, _ := dp.DumpEndpoint(testEP)
	if d3.TableID == d1.TableID || dp.Revision() == rev {
		t.Fatal("a changed state did not switch buffers / bump the revision")
	}
	// The previous tables stay in the inactive buffer (the next change
	// writes only what differs from them).
	loaded, _ := dp.scanPolicy()
	if len(loaded) != 2 || len(loaded[d3.TableID]) == 0 || len(loaded[d1.TableID]) == 0 {
		t.Fatalf("want the active and the previous buffer, got %d tables", len(loaded))
	}
	var sb strings.Builder
	d3.Format(&sb)
	if !strings.Contains(sb.String(), "ns/web") {
		t.Fatalf("dump misses policy name:\n%s", sb.String())
	}
}

func TestStructLayoutsMatchC(t *testing.T) {
	spec, err := loadBpf()
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, goType any, mapName string, key bool) {
		ms := spec.Maps[mapName]
		want := ms.ValueSize
		if key {
			want = ms.KeySize
		}
		if got := uint32(reflect.TypeOf(goType).Size()); got != want {
			t.Errorf("%s: Go size %d, C size %d", name, got, want)
		}
	}
	check("bw_endpoint", bpfBwEndpoint{}, bpfMapBwEndpoints, false)
	check("bw_ipcache_key", bpfBwIpcacheKey{}, bpfMapBwIpcache, true)
	check("bw_selector_list", bpfBwSelectorList{}, bpfMapBwIdSelectors, false)
	check("bw_policy_key", bpfBwPolicyKey{}, bpfMapBwPolicy, true)
	check("bw_policy_value", bpfBwPolicyValue{}, bpfMapBwPolicy, false)
	check("bw_ct_key", bpfBwCtKey{}, bpfMapBwConntrack, true)
	check("bw_ct_entry", bpfBwCtEntry{}, bpfMapBwConntrack, false)
	// The LPM key: prefix bits cover table, selector, dir, proto, then port.
	var k bpfBwPolicyKey
	if unsafe.Offsetof(k.Port) != 14 || unsafe.Sizeof(k)*8-32 != policyFullBits ||
		unsafe.Offsetof(k.Proto)*8-32+8 != policyProtoBits {
		t.Errorf("policy key layout: port at %d, size %d", unsafe.Offsetof(k.Port), unsafe.Sizeof(k))
	}
	var sl bpfBwSelectorList
	if len(sl.Selectors) != MaxSelectorsPerIdentity {
		t.Errorf("selector list holds %d, Go assumes %d", len(sl.Selectors), MaxSelectorsPerIdentity)
	}
}

func TestRangeToPrefixes(t *testing.T) {
	for _, r := range [][2]uint16{{0, 65535}, {80, 80}, {8000, 8100}, {1, 65535}, {1024, 65535}, {0, 0}, {65535, 65535}} {
		covered := 0
		next := uint32(r[0])
		for _, p := range rangeToPrefixes(r[0], r[1]) {
			lo, hi := TableKey{Port: p.port, PortBits: p.bits}.PortRange()
			if uint32(lo) != next {
				t.Fatalf("%v: gap at %d", r, next)
			}
			next = uint32(hi) + 1
			covered++
		}
		if next != uint32(r[1])+1 {
			t.Fatalf("%v: ends at %d", r, next-1)
		}
	}
}

func TestICMPErrorsOfTrackedFlowsPass(t *testing.T) {
	dp, _ := setupFixture(t)
	for _, v6 := range []bool{false, true} {
		src, peer := podAddr, peerC
		proto, errType := resolved.ProtoICMP, uint8(3)
		if v6 {
			src, peer = podAddr6, netip.MustParseAddr("fd00::3")
			proto, errType = resolved.ProtoICMPv6, 1
		}
		out := packet{src: src, dst: peer, proto: resolved.ProtoUDP, sport: flowPort(), dport: 9999}
		if run(t, dp, resolved.Egress, out) != tcActOK {
			t.Fatal("egress UDP dropped")
		}
		quoted := out.frame()[14:]
		related := packet{src: peer, dst: src, proto: proto, icmpType: errType, quote: quoted}
		if run(t, dp, resolved.Ingress, related) != tcActOK {
			t.Fatalf("v6=%v: ICMP error quoting a tracked flow dropped", v6)
		}
		other := out
		other.dport = 9998
		unrelated := packet{src: peer, dst: src, proto: proto, icmpType: errType, quote: other.frame()[14:]}
		if run(t, dp, resolved.Ingress, unrelated) != tcActShot {
			t.Fatalf("v6=%v: ICMP error quoting an unknown flow passed", v6)
		}
	}
}

func TestRedirectSetsProxyMark(t *testing.T) {
	dp, _ := setupFixture(t)
	p := packet{src: peerA, dst: podAddr, proto: resolved.ProtoTCP, sport: flowPort(), dport: 9090, tcpFlags: 0x02}
	ctxIn := make([]byte, skbCtxSize)
	ctxOut := make([]byte, skbCtxSize)
	for i, want := range []uint32{ProxyMark(15001), ProxyMark(15001)} { // new flow, then established
		ret, err := dp.objs.BulwarkToPod.Run(&ebpf.RunOptions{Data: p.frame(), Context: ctxIn, ContextOut: ctxOut})
		if err != nil {
			t.Fatal(err)
		}
		if ret != tcActRedirect {
			t.Fatalf("packet %d: verdict %d, want the hairpin to the proxy", i, ret)
		}
		if mark := binary.NativeEndian.Uint32(ctxOut[8:]); mark != want {
			t.Fatalf("packet %d: mark %#x, want %#x", i, mark, want)
		}
		p.tcpFlags = 0x10
	}
	// A plain allow leaves the mark alone.
	p = packet{src: peerA, dst: podAddr, proto: resolved.ProtoTCP, sport: flowPort(), dport: 80, tcpFlags: 0x02}
	if _, err := dp.objs.BulwarkToPod.Run(&ebpf.RunOptions{Data: p.frame(), Context: ctxIn, ContextOut: ctxOut}); err != nil {
		t.Fatal(err)
	}
	if mark := binary.NativeEndian.Uint32(ctxOut[8:]); mark != 0 {
		t.Fatalf("allow set mark %#x", mark)
	}
}

// skbCtxSize is sizeof(struct __sk_buff) (mark at offset 8).
const skbCtxSize = 192

func TestFragmentsFollowTheirFirst(t *testing.T) {
	dp, _ := setupFixture(t)
	for _, src := range []netip.Addr{peerB, peerB6} {
		dst := podAddr
		if src.Is6() {
			dst = podAddr6
		}
		first := packet{src: src, dst: dst, proto: resolved.ProtoUDP, sport: flowPort(), dport: 53, moreFrags: true, fragID: 77}
		later := first
		later.fragOffset, later.moreFrags = 3, false
		if run(t, dp, resolved.Ingress, first) != tcActOK {
			t.Fatalf("%s: allowed first fragment dropped", src)
		}
		if run(t, dp, resolved.Ingress, later) != tcActOK {
			t.Fatalf("%s: later fragment of an allowed datagram dropped", src)
		}
		orphan := later
		orphan.fragID = 78
		if run(t, dp, resolved.Ingress, orphan) != tcActShot {
			t.Fatalf("%s: fragment without its first passed", src)
		}
		denied := packet{src: src, dst: dst, proto: resolved.ProtoUDP, sport: flowPort(), dport: 54, moreFrags: true, fragID: 79}
		deniedLater := denied
		deniedLater.fragOffset, deniedLater.moreFrags = 3, false
		if run(t, dp, resolved.Ingress, denied) != tcActShot || run(t, dp, resolved.Ingress, deniedLater) != tcActShot {
			t.Fatalf("%s: fragments of a denied datagram passed", src)
		}
	}
}

// TestStructOffsetsMatchBTF compares every field offset of the generated Go
// structs with the C struct's BTF.
func TestStructOffsetsMatchBTF(t *testing.T) {
	spec, err := loadBpf()
	if err != nil {
		t.Fatal(err)
	}
	for name, goType := range map[string]any{
		"bw_endpoint": bpfBwEndpoint{}, "bw_ipcache_key": bpfBwIpcacheKey{}, "bw_selector_list": bpfBwSelectorList{},
		"bw_policy_key": bpfBwPolicyKey{}, "bw_policy_value": bpfBwPolicyValue{}, "bw_ct_key": bpfBwCtKey{},
		"bw_ct_entry": bpfBwCtEntry{}, "bw_event": bpfBwEvent{}, "bw_frag_key": bpfBwFragKey{}, "bw_config": bpfBwConfig{},
	} {
		var st *btf.Struct
		if err := spec.Types.TypeByName(name, &st); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		rt := reflect.TypeOf(goType)
		if uint32(rt.Size()) != st.Size {
			t.Errorf("%s: Go size %d, C size %d", name, rt.Size(), st.Size)
		}
		var goFields []reflect.StructField
		for i := 0; i < rt.NumField(); i++ {
			if f := rt.Field(i); f.Name != "_" {
				goFields = append(goFields, f)
			}
		}
		if len(goFields) != len(st.Members) {
			t.Errorf("%s: %d Go fields, %d C members", name, len(goFields), len(st.Members))
			continue
		}
		for i, m := range st.Members {
			if got, want := goFields[i].Offset, uintptr(m.Offset.Bytes()); got != want {
				t.Errorf("%s.%s: Go offset %d, C offset %d", name, m.Name, got, want)
			}
		}
	}
}

// TestProgAuditDefault: a direction selected only by audit-mode policies
// (DirectionPolicy.Audit) passes what nothing matches as an AUDIT verdict
// naming no rule (default), an enforcing deny still drops, and conntrack
// keeps the verdict: the flow's next packets pass without events.
func TestProgAuditDefault(t *testing.T) {
	dp := openTest(t, Sizes{Policy: 4096, IPCache: 1024, IdentitySelectors: 1024, Conntrack: 4096})
	registerEndpoint(t, dp, Endpoint{ID: testEP, IfIndex: 1, Identity: idPod})
	st := fixtureState()
	st.Endpoints[testEP].Egress.Audit = true
	st.Endpoints[testEP].Egress.Selecting = ref("audit-dd")
	if err := dp.Sync(st); err != nil {
		t.Fatal(err)
	}
	events := eventsOf(t, dp)
	comp := dp.Compiled()
	pol := st.Endpoints[testEP]
	cases := []struct {
		name   string
		dst    netip.Addr
		peer   identity.NumericIdentity
		port   uint16
		want   resolved.Verdict
		reason event.DropReason
	}{
		{"audit default", peerA, idA, 443, resolved.AuditDeny, event.ReasonPolicyDenied},
		{"audit deny entry", peerA, idA, 7001, resolved.AuditDeny, event.ReasonPolicyDenyRule},
		{"enforcing deny wins", worldIP, identity.World, 443, resolved.Deny, event.ReasonPolicyDenyRule},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			goRef := pol.Egress.Lookup(st.Selectors, c.peer, resolved.ProtoTCP, c.port)
			dpRef := comp.ReferenceLookup(testEP, resolved.Egress, c.peer, resolved.ProtoTCP, c.port)
			if goRef.Verdict != c.want || dpRef.Verdict != c.want || dpRef.Reason != c.reason {
				t.Fatalf("references: resolved %s, datapath %s (%s); want %s (%s)", goRef.Verdict, dpRef.Verdict, dpRef.Reason, c.want, c.reason)
			}
			before, err := dp.Metrics()
			if err != nil {
				t.Fatal(err)
			}
			syn := packet{src: podAddr, dst: c.dst, proto: resolved.ProtoTCP, sport: flowPort(), dport: c.port, tcpFlags: 0x02}
			ret := run(t, dp, resolved.Egress, syn)
			wantRet, wantEv := uint32(tcActOK), event.Audit
			if c.want == resolved.Deny {
				wantRet, wantEv = tcActShot, event.Dropped
			}
			if ret != wantRet {
				t.Fatalf("kernel returned %d, want %d", ret, wantRet)
			}
			ev, ok := nextEvent(t, events)
			if !ok || ev.Verdict != wantEv || ev.Reason != c.reason || ev.RuleID != dpRef.RuleID || ev.Dst != c.dst {
				t.Fatalf("event %+v (ok %v); want %s reason %s rule %d", ev, ok, wantEv, c.reason, dpRef.RuleID)
			}
			if c.want != resolved.AuditDeny {
				return
			}
			if dpRef.RuleID == 0 {
				if got := goRef.Policies(&pol.Egress); len(got) != 1 || got[0].Name != "audit-dd" {
					t.Fatalf("default audit names %v, want audit-dd", got)
				}
			} else if pols := dp.RulePolicies(dpRef.RuleID); len(pols) != 1 || pols[0].Name != "audit-7001" {
				t.Fatalf("audit rule %d names %v, want audit-7001", dpRef.RuleID, pols)
			}
			after, err := dp.Metrics()
			if err != nil {
				t.Fatal(err)
			}
			if after.Egress.Audited.Packets != before.Egress.Audited.Packets+1 {
				t.Fatalf("audited packets %d -> %d, want one more", before.Egress.Audited.Packets, after.Egress.Audited.Packets)
			}
			// The first packet is traced after its verdict (aggregated per
			// connection: TestProgTraceAggregation); the flow's next
			// packets show nothing new: conntrack passes them without an
			// event, so a dropped packet after them gives the next event.
			expectTrace(t, events, "audited SYN", resolved.Egress, event.ToStack, false, syn)
			ack := syn
			ack.tcpFlags = 0x10
			if ret := run(t, dp, resolved.Egress, ack); ret != tcActOK {
				t.Fatalf("established packet of an audited flow: %d", ret)
			}
			if ret := run(t, dp, resolved.Egress, ack); ret != tcActOK {
				t.Fatalf("established packet of an audited flow: %d", ret)
			}
			marker := packet{src: podAddr, dst: worldIP, proto: resolved.ProtoTCP, sport: flowPort(), dport: 443, tcpFlags: 0x02}
			if ret := run(t, dp, resolved.Egress, marker); ret != tcActShot {
				t.Fatalf("marker packet: %d", ret)
			}
			if ev, ok := nextEvent(t, events); !ok || ev.Verdict != event.Dropped || ev.Dst != worldIP {
				t.Fatalf("after the audited flow's second packet: event %+v (ok %v), want the marker's drop", ev, ok)
			}
		})
	}
}
