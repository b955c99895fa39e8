package datapath

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// testProxy is a transparent TCP splice in the node namespace, the way the
// agent's proxies receive redirected connections (package tproxy cannot be
// imported here: it imports this package): a listener with IP_TRANSPARENT
// on the wildcard address, an upstream dialled from the node to the
// original destination with the original source's identity mark.
type testProxy struct {
	t    *testing.T
	node string
	ipc  map[netip.Prefix]identity.NumericIdentity
	lns  []net.Listener
	port uint16

	mu    sync.Mutex
	flows []string // "src>dst" as accepted (original addresses)
}

func transparentControl(network, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if network == "tcp6" {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// startTestProxy listens on an ephemeral port (IPv4 and IPv6) and installs
// the node's policy routing for marked packets.
func startTestProxy(t *testing.T, tp *topology, ipc map[netip.Prefix]identity.NumericIdentity) *testProxy {
	p := &testProxy{t: t, node: nsPath(tp.node), ipc: ipc}
	sh(t, "ip", "-n", tp.node, "rule", "add", "fwmark", "0x200/0xf00", "lookup", "2004", "pref", "9")
	sh(t, "ip", "-n", tp.node, "-6", "rule", "add", "fwmark", "0x200/0xf00", "lookup", "2004", "pref", "9")
	sh(t, "ip", "-n", tp.node, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "2004")
	sh(t, "ip", "-n", tp.node, "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "2004")
	// Forwarded packets of a redirected flow (to a pod whose own hook
	// hairpins them to the proxy) must not be early-demuxed to the
	// proxy's socket on the way in: the forward path drops packets that
	// carry a socket.
	sh(t, "ip", "netns", "exec", tp.node, "sysctl", "-qw", "net.ipv4.ip_early_demux=0")
	err := inNetNS(p.node, func() error {
		lc := net.ListenConfig{Control: transparentControl}
		ln4, err := lc.Listen(t.Context(), "tcp4", "0.0.0.0:0")
		if err != nil {
			return err
		}
		p.port = uint16(ln4.Addr().(*net.TCPAddr).Port)
		ln6, err := lc.Listen(t.Context(), "tcp6", fmt.Sprintf("[::]:%d", p.port))
		if err != nil {
			ln4.Close()
			return err
		}
		p.lns = []net.Listener{ln4, ln6}
		return nil
	})
	if err != nil {
		t.Fatalf("transparent listener: %v", err)
	}
	t.Cleanup(p.stop)
	for _, ln := range p.lns {
		go p.serve(ln)
	}
	return p
}

func (p *testProxy) stop() {
	for _, ln := range p.lns {
		ln.Close()
	}
}

func (p *testProxy) identity(a netip.Addr) identity.NumericIdentity {
	for pfx, id := range p.ipc {
		if pfx.Contains(a) {
			return id
		}
	}
	return identity.World
}

func (p *testProxy) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go p.splice(c)
	}
}

func (p *testProxy) splice(c net.Conn) {
	defer c.Close()
	src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	dst := c.LocalAddr().(*net.TCPAddr).AddrPort()
	p.mu.Lock()
	p.flows = append(p.flows, fmt.Sprintf("%s>%s", src.Addr().Unmap(), netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())))
	p.mu.Unlock()
	mark := int(ProxyIdentityMark(p.identity(src.Addr().Unmap())))
	var up net.Conn
	err := inNetNS(p.node, func() error {
		d := net.Dialer{Timeout: 2 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark) }); err != nil {
				return err
			}
			return serr
		}}
		var err error
		up, err = d.Dial("tcp", dst.String())
		return err
	})
	if err != nil {
		p.t.Logf("upstream %s: %v", dst, err)
		return // upstream refused: the client's connection closes
	}
	defer up.Close()
	go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
	io.Copy(c, up)
}

func (p *testProxy) saw(flow string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Contains(p.flows, flow)
}

// TestL7RedirectThroughTransparentProxy: a connection whose policy entry
// is a redirect reaches the proxy's transparent listener with its original
// addresses, for an ingress rule (the destination's) and an egress rule (the
// source's), IPv4 and IPv6, local delivery on and off; the proxy's upstream
// connection is judged by the destination's ingress as the original source
// (the identity in its mark) and never redirected again; a UDP datagram
// reaches a transparent UDP socket with its original destination and the
// answer comes back from it (the DNS proxy's way); with no listener the
// connection or datagram is dropped (PROXY_UNAVAILABLE), never passed; a
// revoked redirect stops an open proxied connection.
func TestL7RedirectThroughTransparentProxy(t *testing.T) {
	for _, off := range []bool{false, true} {
		t.Run(fmt.Sprintf("local-delivery-off=%v", off), func(t *testing.T) {
			t.Parallel()
			testL7Redirect(t, off)
		})
	}
}

// l7State: B's ingress redirects 8080 from A (L7) and allows 9090; A's
// egress redirects 9090-9091 towards B (L7) and UDP 5353 (DNS rules); B's
// ingress does not allow 9091. port gives the proxy port of a protocol
// (nil: no proxy).
func l7State(tp *topology, port func(resolved.Protocol) uint16) State {
	st := dualStack(tp, e2eState(tp, []uint16{9090}, false))
	l7 := &resolved.L7Rules{HTTP: []resolved.HTTPRule{{Method: "GET"}}}
	st.Endpoints[2].Ingress.Entries = append(st.Endpoints[2].Ingress.Entries, resolved.Entry{Peer: e2eSelA, Proto: resolved.ProtoTCP,
		PortLo: 8080, PortHi: 8080, Verdict: resolved.Redirect, Origin: ref("b-l7"), L7: l7})
	st.Endpoints[1].Egress.Entries = append(st.Endpoints[1].Egress.Entries, resolved.Entry{Peer: e2eSelB, Proto: resolved.ProtoTCP,
		PortLo: 9090, PortHi: 9091, Verdict: resolved.Redirect, Origin: ref("a-l7"), L7: l7})
	st.Endpoints[1].Egress.Entries = append(st.Endpoints[1].Egress.Entries, resolved.Entry{Peer: e2eSelB, Proto: resolved.ProtoUDP,
		PortLo: 5353, PortHi: 5353, Verdict: resolved.Redirect, Origin: ref("a-dns"),
		L7: &resolved.L7Rules{DNS: []resolved.DNSRule{{MatchPattern: "*"}}}})
	if port != nil {
		st.ProxyPort = func(_ uint32, _ resolved.Direction, e *resolved.Entry) uint16 { return port(e.Proto) }
	}
	return st
}

func testL7Redirect(t *testing.T, localDeliveryOff bool) {
	tp, dp := localDeliveryNode(t, 2, localDeliveryOff, func(tp *topology) State { return l7State(tp, nil) })
	// Without a proxy port every redirected connection drops.
	if c, err := tp.dialTCP(0, 1, 8080); err == nil {
		c.Close()
		t.Fatal("connected to an L7 port with no proxy port")
	}
	proxy := startTestProxy(t, tp, l7State(tp, nil).IPCache)
	udp := startTestUDPProxy(t, nsPath(tp.node))
	st := l7State(tp, func(p resolved.Protocol) uint16 {
		if p == resolved.ProtoUDP {
			return udp.port
		}
		return proxy.port
	})
	st.Revision = 2
	if err := dp.Sync(st); err != nil {
		t.Fatal(err)
	}
	events := eventsOf(t, dp)
	tp.listenTCP(1, 8080)
	tp.listenTCP(1, 9090)
	tp.listenTCP(1, 9091)
	a, b := tp.pods[0], tp.pods[1]
	for _, v6 := range []bool{false, true} {
		srcA, dstB := a.addr, b.addr
		if v6 {
			srcA, dstB = a.addr6, b.addr6
		}
		for _, port := range []uint16{8080, 9090} { // ingress rule, egress rule
			dst := netip.AddrPortFrom(dstB, port)
			c, err := tp.dialTCPTo(0, dst)
			if err != nil {
				t.Fatalf("v6=%v port %d: connect through the proxy: %v", v6, port, err)
			}
			for i := range 3 {
				if err := roundTrip(c, fmt.Sprint("via proxy ", i)); err != nil {
					t.Fatalf("v6=%v port %d round %d: %v", v6, port, i, err)
				}
			}
			c.Close()
			if !proxy.saw(fmt.Sprintf("%s>%s", srcA, dst)) {
				t.Fatalf("v6=%v port %d: the proxy did not see the original flow %s>%s: %v", v6, port, srcA, dst, proxy.flows)
			}
		}
		// Egress L7 towards 9091, which B's ingress does not allow from
		// A: the proxy's upstream, marked as A, is dropped at B.
		if c, err := tp.dialTCPTo(0, netip.AddrPortFrom(dstB, 9091)); err == nil {
			if err := roundTrip(c, "must not pass"); err == nil {
				t.Fatalf("v6=%v: the proxy's upstream reached B on 9091, which B's ingress denies to A", v6)
			}
			c.Close()
		}
	}
	// UDP (the DNS proxy's way): the datagram reaches the proxy's
	// transparent socket with its original destination, and the answer
	// comes back from that destination. B's own server on 5353 never sees
	// it.
	tp.listenUDP(1, 5353)
	for _, dst := range []netip.Addr{b.addr, b.addr6} {
		to := netip.AddrPortFrom(dst, 5353)
		if got, err := tp.udpAsk(0, to, "q"); err != nil || got != "proxied q to "+to.String() {
			t.Fatalf("udp to %s: answer %q (%v), want it from the proxy", to, got, err)
		}
	}
	// A redirect revoked by a policy change does not keep passing: an
	// open connection through the proxy stops at the next packet.
	c, err := tp.dialTCPTo(0, netip.AddrPortFrom(b.addr, 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c, "before the revocation"); err != nil {
		t.Fatal(err)
	}
	revoked := l7State(tp, func(resolved.Protocol) uint16 { return proxy.port })
	ing := &revoked.Endpoints[2].Ingress
	ing.Entries = slices.DeleteFunc(ing.Entries, func(e resolved.Entry) bool { return e.PortLo == 8080 })
	revoked.Revision = 3
	if err := dp.Sync(revoked); err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c, "after the revocation"); err == nil {
		t.Fatal("a connection through the proxy kept passing after its redirect was revoked")
	}
	st.Revision = 4
	if err := dp.Sync(st); err != nil { // back to the redirect for what follows
		t.Fatal(err)
	}
	drainEvents(events)
	// No listener: redirected connections are dropped, never passed.
	proxy.stop()
	udp.stop()
	if got, err := tp.udpAsk(0, netip.AddrPortFrom(b.addr, 5353), "q"); err == nil {
		t.Fatalf("udp with no proxy socket answered %q", got)
	}
	for _, port := range []uint16{8080, 9090} {
		if c, err := tp.dialTCP(0, 1, int(port)); err == nil {
			c.Close()
			t.Fatalf("port %d: connected with no proxy listening", port)
		}
	}
	var reasons []event.DropReason
	for _, ev := range drainEvents(events) {
		if ev.Verdict == event.Dropped {
			reasons = append(reasons, ev.Reason)
		}
	}
	if !slices.Contains(reasons, event.ReasonProxyUnavailable) {
		t.Fatalf("no PROXY_UNAVAILABLE drop without a listener: %v", reasons)
	}
}

// testUDPProxy is a transparent UDP socket in the node namespace that
// answers "proxied <msg> to <original destination>" from that destination.
type testUDPProxy struct {
	conns []*net.UDPConn
	port  uint16
}

func startTestUDPProxy(t *testing.T, node string) *testUDPProxy {
	p := &testUDPProxy{}
	ctl := func(v6 bool) func(string, string, syscall.RawConn) error {
		return func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				lvl, tr, orig := unix.SOL_IP, unix.IP_TRANSPARENT, unix.IP_RECVORIGDSTADDR
				if v6 {
					lvl, tr, orig = unix.SOL_IPV6, unix.IPV6_TRANSPARENT, unix.IPV6_RECVORIGDSTADDR
				}
				if serr = unix.SetsockoptInt(int(fd), lvl, tr, 1); serr == nil {
					serr = unix.SetsockoptInt(int(fd), lvl, orig, 1)
				}
				if serr == nil {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
				}
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	listen := func(network, addr string) (*net.UDPConn, error) {
		var c *net.UDPConn
		err := inNetNS(node, func() error {
			lc := net.ListenConfig{Control: ctl(network == "udp6")}
			pc, err := lc.ListenPacket(t.Context(), network, addr)
			if err == nil {
				c = pc.(*net.UDPConn)
			}
			return err
		})
		return c, err
	}
	c4, err := listen("udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	p.port = uint16(c4.LocalAddr().(*net.UDPAddr).Port)
	c6, err := listen("udp6", fmt.Sprintf("[::]:%d", p.port))
	if err != nil {
		t.Fatal(err)
	}
	p.conns = []*net.UDPConn{c4, c6}
	t.Cleanup(p.stop)
	for _, c := range p.conns {
		go func() {
			buf, oob := make([]byte, 1500), make([]byte, 128)
			for {
				n, oobn, _, src, err := c.ReadMsgUDPAddrPort(buf, oob)
				if err != nil {
					return
				}
				dst, ok := origDstOf(oob[:oobn])
				if !ok {
					continue
				}
				network := "udp4"
				if dst.Addr().Is6() {
					network = "udp6"
				}
				reply, err := listen(network, dst.String())
				if err != nil {
					continue
				}
				reply.WriteToUDPAddrPort([]byte(fmt.Sprintf("proxied %s to %s", buf[:n], dst)), src)
				reply.Close()
			}
		}()
	}
	return p
}

func (p *testUDPProxy) stop() {
	for _, c := range p.conns {
		c.Close()
	}
}

func origDstOf(oob []byte) (netip.AddrPort, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.AddrPort{}, false
	}
	for _, m := range msgs {
		d := m.Data
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(d) >= 8:
			a, _ := netip.AddrFromSlice(d[4:8])
			return netip.AddrPortFrom(a, uint16(d[2])<<8|uint16(d[3])), true
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_ORIGDSTADDR && len(d) >= 24:
			a, _ := netip.AddrFromSlice(d[8:24])
			return netip.AddrPortFrom(a, uint16(d[2])<<8|uint16(d[3])), true
		}
	}
	return netip.AddrPort{}, false
}

// udpAsk sends msg from pod i to to and returns the answer, which must come
// from to.
func (tp *topology) udpAsk(i int, to netip.AddrPort, msg string) (string, error) {
	var pc *net.UDPConn
	err := inNetNS(nsPath(tp.pods[i].ns), func() error {
		c, err := net.ListenPacket("udp", ":0")
		if err == nil {
			pc = c.(*net.UDPConn)
		}
		return err
	})
	if err != nil {
		return "", err
	}
	defer pc.Close()
	pc.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := pc.WriteToUDPAddrPort([]byte(msg), to); err != nil {
		return "", err
	}
	buf := make([]byte, 1500)
	n, from, err := pc.ReadFromUDPAddrPort(buf)
	if err != nil {
		return "", err
	}
	if netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) != to {
		return "", fmt.Errorf("answer from %s, want from %s", from, to)
	}
	return string(buf[:n]), nil
}
