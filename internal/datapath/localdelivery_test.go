package datapath

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// hostTx is the number of packets the node side of pod i's veth has
// transmitted: what the node's IP stack delivered to the pod.
func (tp *topology) hostTx(i int) uint64 {
	tp.t.Helper()
	out := sh(tp.t, "ip", "netns", "exec", tp.node, "cat", "/sys/class/net/"+tp.pods[i].hostIf+"/statistics/tx_packets")
	n, err := strconv.ParseUint(strings.TrimSpace(out), 10, 64)
	if err != nil {
		tp.t.Fatalf("tx_packets of %s: %q: %v", tp.pods[i].hostIf, out, err)
	}
	return n
}

func metricsOf(t *testing.T, dp *Datapath) Metrics {
	t.Helper()
	m, err := dp.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// dualStack adds the pods' IPv6 addresses to st's ipcache.
func dualStack(tp *topology, st State) State {
	for p, id := range st.IPCache {
		for _, pod := range tp.pods {
			if p.Addr() == pod.addr {
				st.IPCache[netip.PrefixFrom(pod.addr6, 128)] = id
			}
		}
	}
	return st
}

// localDeliveryNode builds n pods, opens a datapath on them (local
// delivery off when off is set), attaches every pod and loads st.
func localDeliveryNode(t *testing.T, n int, off bool, st func(*topology) State) (*topology, *Datapath) {
	t.Helper()
	tp := newTopology(t, n)
	dp := openE2EWith(t, Options{PinDir: "/sys/fs/bpf/bulwark-ld-" + tp.sfx, DisableLocalDelivery: off})
	t.Cleanup(func() { dp.Destroy() })
	attachAll(t, dp, tp)
	if err := dp.Sync(st(tp)); err != nil {
		t.Fatal(err)
	}
	return tp, dp
}

// TestLocalDelivery: pod-to-pod packets are decided at the source's hook for
// both ends and handed straight to the destination pod. The destination's
// host veth transmits none of them (the node's stack is bypassed), its
// ingress policy still holds (a denied connection is dropped at the source
// with the destination's endpoint, direction and reason), replies travel
// the same way, and the packet is routed as the node would route it.
func TestLocalDelivery(t *testing.T) {
	t.Parallel()
	tp, dp := localDeliveryNode(t, 3, false, func(tp *topology) State { return dualStack(tp, e2eState(tp, []uint16{8080}, true)) })
	tp.listenTCP(1, 8080)
	tp.listenTCP(1, 8081)

	c, err := tp.dialTCP(0, 1, 8080)
	if err != nil {
		t.Fatalf("allowed TCP connect: %v", err)
	}
	defer c.Close()
	// The first packets resolve the node's neighbour entries through the
	// stack; from then on the fib lookup finds them.
	if err := roundTrip(c, "warm"); err != nil {
		t.Fatal(err)
	}
	tx0, m0 := tp.hostTx(1), metricsOf(t, dp)
	const rounds = 50
	for i := range rounds {
		if err := roundTrip(c, fmt.Sprint("round ", i)); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
	}
	tx1, m1 := tp.hostTx(1), metricsOf(t, dp)
	delivered := m1.Egress.LocalDelivered.Packets - m0.Egress.LocalDelivered.Packets
	if delivered < 2*rounds {
		t.Errorf("%d packets delivered locally over %d request/response rounds, want at least %d", delivered, rounds, 2*rounds)
	}
	if n := tx1 - tx0; n > 5 {
		t.Errorf("B's host veth transmitted %d packets during %d rounds: the node's stack carried them", n, rounds)
	}
	if fwd := m1.Ingress.Forwarded.Packets - m0.Ingress.Forwarded.Packets; fwd < delivered {
		t.Errorf("ingress forwarded %d packets, fewer than the %d delivered: the destination's verdict was skipped", fwd, delivered)
	}

	// The destination's ingress policy, decided at the source.
	events := eventsOf(t, dp)
	if c, err := tp.dialTCP(0, 1, 8081); err == nil {
		c.Close()
		t.Fatal("TCP to a port B does not admit connected")
	}
	if c, err := tp.dialTCP(1, 0, 8080); err == nil {
		c.Close()
		t.Fatal("B connected to A under A's default deny")
	}
	var deniedAtB, deniedAtA bool
	for _, ev := range drainEvents(events) {
		if ev.Type != event.TypeDrop || ev.Reason != event.ReasonPolicyDenied || ev.Direction != resolved.Ingress {
			continue
		}
		if ev.EndpointID == 2 && ev.DstPort == 8081 && ev.SrcIdentity == e2eIDA && ev.DstIdentity == e2eIDB {
			deniedAtB = true
		}
		if ev.EndpointID == 1 && ev.DstPort == 8080 && ev.SrcIdentity == e2eIDB && ev.DstIdentity == e2eIDA {
			deniedAtA = true
		}
	}
	if !deniedAtB || !deniedAtA {
		t.Errorf("ingress drop events: B's for A→B:8081 %v, A's for B→A:8080 %v; want both", deniedAtB, deniedAtA)
	}

	// UDP, ICMP and IPv6 take the same way.
	tp.listenUDP(1, 5353)
	before := metricsOf(t, dp).Egress.LocalDelivered.Packets
	for range 3 { // the first may resolve neighbours through the stack
		if err := tp.udpExchange(0, 1, 5353); err != nil {
			t.Fatalf("allowed UDP: %v", err)
		}
		if err := tp.ping(0, 1); err != nil {
			t.Fatalf("allowed ping: %v", err)
		}
	}
	if metricsOf(t, dp).Egress.LocalDelivered.Packets-before < 4 {
		t.Error("UDP and ICMP were not delivered locally")
	}
	c6, err := tp.dialTCPTo(0, netip.AddrPortFrom(tp.pods[1].addr6, 8080))
	if err != nil {
		t.Fatalf("IPv6 connect: %v", err)
	}
	defer c6.Close()
	before = metricsOf(t, dp).Egress.LocalDelivered.Packets
	for i := range 5 {
		if err := roundTrip(c6, fmt.Sprint("v6 ", i)); err != nil {
			t.Fatalf("IPv6 round %d: %v", i, err)
		}
	}
	if metricsOf(t, dp).Egress.LocalDelivered.Packets-before < 8 {
		t.Error("IPv6 packets were not delivered locally")
	}
}

// TestLocalDeliveryRoutesLikeTheNode: a delivered packet arrives with its
// TTL / hop limit one lower, as the node's forwarding leaves it.
func TestLocalDeliveryRoutesLikeTheNode(t *testing.T) {
	t.Parallel()
	tp, dp := localDeliveryNode(t, 2, false, func(tp *topology) State { return dualStack(tp, e2eState(tp, nil, false)) })
	for _, v6 := range []bool{false, true} {
		dst := tp.pods[1].addr
		if v6 {
			dst = tp.pods[1].addr6
		}
		ttls := tp.receivedHopLimits(t, dst, 5353, 4)
		if last := ttls[len(ttls)-1]; last != 63 {
			t.Errorf("IPv6 %v: hop limits as received %v, want 63 (64 less the node's hop)", v6, ttls)
		}
	}
	if metricsOf(t, dp).Egress.LocalDelivered.Packets == 0 {
		t.Error("nothing was delivered locally")
	}
}

// receivedHopLimits sends n datagrams from pod 0 to dst:port in pod 1 with
// TTL / hop limit 64 and returns the TTLs they arrived with.
func (tp *topology) receivedHopLimits(t *testing.T, dst netip.Addr, port, n int) []int {
	t.Helper()
	network, any := "udp4", "0.0.0.0"
	if dst.Is6() {
		network, any = "udp6", "::"
	}
	var rx, tx net.PacketConn
	err := inNetNS(nsPath(tp.pods[1].ns), func() (err error) {
		rx, err = net.ListenPacket(network, net.JoinHostPort(any, strconv.Itoa(port)))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	if err := inNetNS(nsPath(tp.pods[0].ns), func() (err error) {
		tx, err = net.ListenPacket(network, net.JoinHostPort(any, "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	var read func() (int, error)
	if dst.Is4() {
		rc := ipv4.NewPacketConn(rx)
		if err := rc.SetControlMessage(ipv4.FlagTTL, true); err != nil {
			t.Fatal(err)
		}
		if err := ipv4.NewPacketConn(tx).SetTTL(64); err != nil {
			t.Fatal(err)
		}
		read = func() (int, error) {
			_, cm, _, err := rc.ReadFrom(make([]byte, 64))
			if err != nil || cm == nil {
				return 0, fmt.Errorf("read with TTL: %v (control message %v)", err, cm)
			}
			return cm.TTL, nil
		}
	} else {
		rc := ipv6.NewPacketConn(rx)
		if err := rc.SetControlMessage(ipv6.FlagHopLimit, true); err != nil {
			t.Fatal(err)
		}
		if err := ipv6.NewPacketConn(tx).SetHopLimit(64); err != nil {
			t.Fatal(err)
		}
		read = func() (int, error) {
			_, cm, _, err := rc.ReadFrom(make([]byte, 64))
			if err != nil || cm == nil {
				return 0, fmt.Errorf("read with hop limit: %v (control message %v)", err, cm)
			}
			return cm.HopLimit, nil
		}
	}
	var out []int
	for range n {
		if _, err := tx.WriteTo([]byte("ttl"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, uint16(port)))); err != nil {
			t.Fatal(err)
		}
		rx.SetReadDeadline(time.Now().Add(3 * time.Second))
		ttl, err := read()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ttl)
	}
	return out
}

// TestLocalDeliveryOff: with DisableLocalDelivery every packet takes the
// node's stack and both hooks.
func TestLocalDeliveryOff(t *testing.T) {
	t.Parallel()
	tp, dp := localDeliveryNode(t, 2, true, func(tp *topology) State { return e2eState(tp, []uint16{8080}, false) })
	tp.listenTCP(1, 8080)
	c, err := tp.dialTCP(0, 1, 8080)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tx0 := tp.hostTx(1)
	for i := range 10 {
		if err := roundTrip(c, fmt.Sprint("off ", i)); err != nil {
			t.Fatal(err)
		}
	}
	if n := tp.hostTx(1) - tx0; n < 10 {
		t.Errorf("B's host veth transmitted %d packets over 10 rounds with local delivery off", n)
	}
	if n := metricsOf(t, dp).Egress.LocalDelivered.Packets; n != 0 {
		t.Errorf("%d packets delivered locally with local delivery off", n)
	}
}

// TestLocalDeliveryForgetsADetachedEndpoint: detaching the destination
// moves the revision, so the source's flows drop their cached route to it
// at once: the next packets take the node's stack (the pod, no longer an
// endpoint, is not enforced) and none is judged against the missing record.
func TestLocalDeliveryForgetsADetachedEndpoint(t *testing.T) {
	t.Parallel()
	tp, dp := localDeliveryNode(t, 2, false, func(tp *topology) State { return e2eState(tp, []uint16{8080}, false) })
	tp.listenTCP(1, 8080)
	c, err := tp.dialTCP(0, 1, 8080)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 3 {
		if err := roundTrip(c, fmt.Sprint("before ", i)); err != nil {
			t.Fatal(err)
		}
	}
	if metricsOf(t, dp).Egress.LocalDelivered.Packets == 0 {
		t.Fatal("nothing was delivered locally before the detach")
	}
	if err := dp.DetachEndpoint(2); err != nil {
		t.Fatal(err)
	}
	tx0, m0 := tp.hostTx(1), metricsOf(t, dp)
	for i := range 5 {
		if err := roundTrip(c, fmt.Sprint("after ", i)); err != nil {
			t.Fatalf("round %d after the detach: %v", i, err)
		}
	}
	m1 := metricsOf(t, dp)
	if n := m1.Ingress.Dropped[event.ReasonUnknownEndpoint].Packets; n != 0 {
		t.Errorf("%d packets judged against the detached endpoint's missing record", n)
	}
	if n := m1.Egress.LocalDelivered.Packets - m0.Egress.LocalDelivered.Packets; n != 0 {
		t.Errorf("%d packets delivered locally to the detached endpoint", n)
	}
	if n := tp.hostTx(1) - tx0; n < 5 {
		t.Errorf("the node's stack carried %d packets to the detached pod over 5 rounds", n)
	}
}
