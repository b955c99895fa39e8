package datapath

import (
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

const (
	e2eIDA  identity.NumericIdentity = 5001
	e2eIDB  identity.NumericIdentity = 5002
	e2eIDC  identity.NumericIdentity = 5003
	e2eSelA resolved.SelectorID      = 11
	e2eSelB resolved.SelectorID      = 12
	e2eSelC resolved.SelectorID      = 13
)

// e2eState: B admits A on TCP 8080 and UDP 5353 (and ICMP when ping is
// set); A admits nobody (replies must pass through conntrack); egress is
// open.
func e2eState(tp *topology, tcpPorts []uint16, ping bool) State {
	b := &resolved.EndpointPolicy{Identity: e2eIDB, Ingress: resolved.DirectionPolicy{Enforced: true}}
	for _, p := range tcpPorts {
		b.Ingress.Entries = append(b.Ingress.Entries, resolved.Entry{Peer: e2eSelA, Proto: resolved.ProtoTCP, PortLo: p, PortHi: p, Verdict: resolved.Allow, Origin: ref("b-tcp")})
	}
	b.Ingress.Entries = append(b.Ingress.Entries, resolved.Entry{Peer: e2eSelA, Proto: resolved.ProtoUDP, PortLo: 5353, PortHi: 5353, Verdict: resolved.Allow, Origin: ref("b-udp")})
	if ping {
		b.Ingress.Entries = append(b.Ingress.Entries, resolved.Entry{Peer: e2eSelA, Proto: resolved.ProtoICMP, Verdict: resolved.Allow, Origin: ref("b-ping")})
	}
	a := &resolved.EndpointPolicy{Identity: e2eIDA, Ingress: resolved.DirectionPolicy{Enforced: true}}
	eps := map[uint32]*resolved.EndpointPolicy{1: a, 2: b}
	ipc := map[netip.Prefix]identity.NumericIdentity{
		netip.PrefixFrom(tp.pods[0].addr, 32): e2eIDA,
		netip.PrefixFrom(tp.pods[1].addr, 32): e2eIDB,
	}
	if len(tp.pods) > 2 {
		eps[3] = &resolved.EndpointPolicy{Identity: e2eIDC, Ingress: resolved.DirectionPolicy{Enforced: true,
			Entries: []resolved.Entry{{Peer: e2eSelA, Proto: resolved.ProtoTCP, PortLo: 8080, PortHi: 8080, Verdict: resolved.Allow, Origin: ref("c-tcp")}}}}
		ipc[netip.PrefixFrom(tp.pods[2].addr, 32)] = e2eIDC
	}
	return State{
		Endpoints: eps,
		Selectors: fixtureSelectors{e2eSelA: {e2eIDA}, e2eSelB: {e2eIDB}, e2eSelC: {e2eIDC}},
		IPCache:   ipc,
	}
}

func openE2E(t *testing.T, pinDir string, legacy bool) *Datapath {
	t.Helper()
	return openE2EWith(t, Options{PinDir: pinDir, ForceLegacyTC: legacy})
}

// openE2EWith opens a datapath for the netns tests: o with no background
// conntrack GC and small maps.
func openE2EWith(t *testing.T, o Options) *Datapath {
	t.Helper()
	t.Cleanup(func() { os.RemoveAll(o.PinDir) }) // backstop if a test stops early
	o.ConntrackGCInterval = -1
	o.Sizes = Sizes{IPCache: 1024, IdentitySelectors: 1024, Policy: 4096, Conntrack: 4096}
	dp, err := Open(o)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return dp
}

func attachAll(t *testing.T, dp *Datapath, tp *topology) { attachAllTB(t, dp, tp) }

func attachAllTB(t testing.TB, dp *Datapath, tp *topology) {
	t.Helper()
	ids := []identity.NumericIdentity{e2eIDA, e2eIDB, e2eIDC}
	for i := range tp.pods {
		ep := tp.endpoint(i, uint32(i+1))
		ep.Identity = ids[i]
		if err := dp.AttachEndpoint(ep); err != nil {
			t.Fatalf("attach: %v", err)
		}
	}
}

func TestE2EAllowDenyReplies(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		name := "tcx"
		if legacy {
			name = "legacy-tc"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tp := newTopology(t, 2)
			pin := "/sys/fs/bpf/bulwark-e2e-" + tp.sfx
			dp := openE2E(t, pin, legacy)
			t.Cleanup(func() { dp.Destroy() })
			attachAll(t, dp, tp)
			if err := dp.Sync(e2eState(tp, []uint16{8080}, false)); err != nil {
				t.Fatal(err)
			}
			tp.listenTCP(1, 8080)
			tp.listenTCP(1, 8081)
			tp.listenTCP(0, 8080)
			tp.listenUDP(1, 5353)
			tp.listenUDP(1, 5354)

			c, err := tp.dialTCP(0, 1, 8080)
			if err != nil {
				t.Fatalf("allowed TCP connect: %v", err)
			}
			defer c.Close()
			if err := roundTrip(c, "hello"); err != nil {
				t.Fatalf("allowed TCP exchange (replies through conntrack): %v", err)
			}
			if c, err := tp.dialTCP(0, 1, 8081); err == nil {
				c.Close()
				t.Fatal("TCP to a port without allow connected")
			}
			if c, err := tp.dialTCP(1, 0, 8080); err == nil {
				c.Close()
				t.Fatal("B connected to A under A's default deny")
			}
			if err := tp.udpExchange(0, 1, 5353); err != nil {
				t.Fatalf("allowed UDP: %v", err)
			}
			if err := tp.udpExchange(0, 1, 5354); err == nil {
				t.Fatal("UDP to a port without allow answered")
			}
			big := netip.AddrPortFrom(tp.pods[1].addr, 5353)
			if err := tp.udpExchangeSize(0, big, 4000); err != nil {
				t.Fatalf("fragmented UDP both ways: %v", err)
			}
			if err := tp.ping(0, 1); err == nil {
				t.Fatal("ICMP echo answered without an allow")
			}
			if err := dp.Sync(e2eState(tp, []uint16{8080}, true)); err != nil {
				t.Fatal(err)
			}
			if err := tp.ping(0, 1); err != nil {
				t.Fatalf("ICMP echo with allow: %v", err)
			}
			if err := roundTrip(c, "still"); err != nil {
				t.Fatalf("connection broken by a policy change that keeps it: %v", err)
			}
		})
	}
}

func TestE2EPolicyChangeMidConnection(t *testing.T) {
	t.Parallel()
	tp := newTopology(t, 2)
	dp := openE2E(t, "/sys/fs/bpf/bulwark-e2e-"+tp.sfx, false)
	t.Cleanup(func() { dp.Destroy() })
	attachAll(t, dp, tp)
	if err := dp.Sync(e2eState(tp, []uint16{8080, 9090}, false)); err != nil {
		t.Fatal(err)
	}
	tp.listenTCP(1, 8080)
	tp.listenTCP(1, 9090)
	kept, err := tp.dialTCP(0, 1, 8080)
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	revoked, err := tp.dialTCP(0, 1, 9090)
	if err != nil {
		t.Fatal(err)
	}
	defer revoked.Close()
	if roundTrip(kept, "a") != nil || roundTrip(revoked, "b") != nil {
		t.Fatal("connections not working before the change")
	}
	if err := dp.Sync(e2eState(tp, []uint16{8080}, false)); err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(kept, "a2"); err != nil {
		t.Fatalf("connection that stays allowed broke: %v", err)
	}
	if err := roundTrip(revoked, "b2"); err == nil {
		t.Fatal("revoked connection still carries traffic")
	}
	m, err := dp.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	if m.Ingress.Dropped[event.ReasonRevoked].Packets == 0 {
		t.Fatalf("no revoked drops counted: %+v", m.Ingress.Dropped)
	}
}

func TestE2EAgentRestartKeepsEnforcement(t *testing.T) {
	t.Parallel()
	tp := newTopology(t, 2)
	pin := "/sys/fs/bpf/bulwark-e2e-" + tp.sfx
	dp := openE2E(t, pin, false)
	attachAll(t, dp, tp)
	st := e2eState(tp, []uint16{8080}, false)
	if err := dp.Sync(st); err != nil {
		t.Fatal(err)
	}
	tp.listenTCP(1, 8080)
	tp.listenTCP(1, 8081)
	c, err := tp.dialTCP(0, 1, 8080)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c, "before"); err != nil {
		t.Fatal(err)
	}
	// Agent stops: programs, links and maps stay.
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c, "agent-down"); err != nil {
		t.Fatalf("connection broke while the agent was down: %v", err)
	}
	if c2, err := tp.dialTCP(0, 1, 8081); err == nil {
		c2.Close()
		t.Fatal("enforcement lapsed while the agent was down")
	}
	// Agent starts again and adopts.
	dp2 := openE2E(t, pin, false)
	t.Cleanup(func() { dp2.Destroy() })
	if eps := dp2.Endpoints(); len(eps) != 2 || eps[0].IfIndex != tp.pods[0].hostIndex || eps[1].Identity != e2eIDB {
		t.Fatalf("adopted endpoints: %+v", eps)
	}
	attachAll(t, dp2, tp)
	if err := dp2.Sync(st); err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c, "after"); err != nil {
		t.Fatalf("connection broke across the restart: %v", err)
	}
	if c2, err := tp.dialTCP(0, 1, 8081); err == nil {
		c2.Close()
		t.Fatal("enforcement lapsed after the restart")
	}
	if p := dp2.MapPressure(); p["policy"] <= 0 || p["endpoints"] <= 0 {
		t.Fatalf("map pressure: %v", p)
	}
	// Re-attaching adopted the pinned links instead of stacking new ones.
	err = inNetNS(nsPath(tp.node), func() error {
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: tp.pods[1].hostIndex, Attach: at})
			if err != nil {
				return err
			}
			if len(res.Programs) != 1 {
				t.Errorf("%d programs attached at %v, want 1", len(res.Programs), at)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestE2ENewPodFailsClosedUntilPolicy(t *testing.T) {
	t.Parallel()
	tp := newTopology(t, 3)
	dp := openE2E(t, "/sys/fs/bpf/bulwark-e2e-"+tp.sfx, false)
	t.Cleanup(func() { dp.Destroy() })
	// Pods A and B are known; C is created later.
	st := e2eState(tp, []uint16{8080}, false)
	delete(st.Endpoints, 3)
	for i := 0; i < 2; i++ {
		ep := tp.endpoint(i, uint32(i+1))
		if err := dp.AttachEndpoint(ep); err != nil {
			t.Fatal(err)
		}
	}
	if err := dp.Sync(st); err != nil {
		t.Fatal(err)
	}
	tp.listenTCP(2, 8080)
	// C's interface gets the program before its policy exists.
	ep := tp.endpoint(2, 3)
	ep.Identity = e2eIDC
	if err := dp.AttachEndpoint(ep); err != nil {
		t.Fatal(err)
	}
	if c, err := tp.dialTCP(0, 2, 8080); err == nil {
		c.Close()
		t.Fatal("a pod without policy received traffic")
	}
	if err := tp.udpExchange(2, 0, 9); err == nil {
		t.Fatal("a pod without policy sent traffic")
	}
	if err := dp.Sync(e2eState(tp, []uint16{8080}, false)); err != nil {
		t.Fatal(err)
	}
	c, err := tp.dialTCP(0, 2, 8080)
	if err != nil {
		t.Fatalf("allowed after policy: %v", err)
	}
	defer c.Close()
	if err := roundTrip(c, "hi"); err != nil {
		t.Fatal(err)
	}
	if c, err := tp.dialTCP(1, 2, 8080); err == nil {
		c.Close()
		t.Fatal("B reached C although only A is allowed")
	}
}

func TestE2EIPv6(t *testing.T) {
	t.Parallel()
	tp := newTopology(t, 2)
	dp := openE2E(t, "/sys/fs/bpf/bulwark-e2e-"+tp.sfx, false)
	t.Cleanup(func() { dp.Destroy() })
	attachAll(t, dp, tp)
	st := e2eState(tp, []uint16{8080}, false)
	st.IPCache[netip.PrefixFrom(tp.pods[0].addr6, 128)] = e2eIDA
	st.IPCache[netip.PrefixFrom(tp.pods[1].addr6, 128)] = e2eIDB
	if err := dp.Sync(st); err != nil {
		t.Fatal(err)
	}
	tp.listenTCP(1, 8080)
	tp.listenTCP(1, 8081)
	tp.listenUDP(1, 5353)
	tp.listenUDP(1, 5354)
	// Neighbour discovery passes although both pods are default deny.
	c, err := tp.dialTCPTo(0, netip.AddrPortFrom(tp.pods[1].addr6, 8080))
	if err != nil {
		t.Fatalf("allowed TCP over IPv6: %v", err)
	}
	defer c.Close()
	if err := roundTrip(c, "v6"); err != nil {
		t.Fatal(err)
	}
	if c, err := tp.dialTCPTo(0, netip.AddrPortFrom(tp.pods[1].addr6, 8081)); err == nil {
		c.Close()
		t.Fatal("TCP over IPv6 to a port without allow connected")
	}
	if err := tp.udpExchangeTo(0, netip.AddrPortFrom(tp.pods[1].addr6, 5353)); err != nil {
		t.Fatalf("allowed UDP over IPv6: %v", err)
	}
	if err := tp.udpExchangeTo(0, netip.AddrPortFrom(tp.pods[1].addr6, 5354)); err == nil {
		t.Fatal("UDP over IPv6 to a port without allow answered")
	}
	if err := tp.udpExchangeSize(0, netip.AddrPortFrom(tp.pods[1].addr6, 5353), 4000); err != nil {
		t.Fatalf("fragmented UDP over IPv6 both ways: %v", err)
	}
}

func TestAttachMissingInterfaceFails(t *testing.T) {
	dp := openTest(t, Sizes{Policy: 1024})
	if err := dp.AttachEndpoint(Endpoint{ID: 9, IfIndex: 1 << 20}); err == nil {
		t.Fatal("attached to an interface that does not exist")
	}
	if len(dp.Endpoints()) != 0 {
		t.Fatalf("failed attach left an endpoint: %+v", dp.Endpoints())
	}
}
