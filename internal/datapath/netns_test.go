package datapath

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// topology is a node namespace with pod namespaces behind veths; each pod
// has routes only to the other pods' subnets, forwarding is on in the node
// namespace only.
type topology struct {
	t    testing.TB
	sfx  string
	node string // netns name
	pods []*testPod
	cpu  int // benchmarks: the CPU of the rr peers, -1 = any
}

type testPod struct {
	ns        string
	addr      netip.Addr
	addr6     netip.Addr
	hostIf    string
	hostIndex int
}

func sh(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func nsPath(name string) string { return "/run/netns/" + name }

// newTopology builds a node and n pods: pod i has 10.200.i.2/24, its
// host veth 10.200.i.1/24 in the node namespace.
func newTopology(t testing.TB, n int) *topology {
	t.Helper()
	requireRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2")
	}
	tp := &topology{t: t, sfx: randSuffix()}
	tp.node = "bwn-" + tp.sfx
	sh(t, "ip", "netns", "add", tp.node)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", tp.node).Run() })
	sh(t, "ip", "-n", tp.node, "link", "set", "lo", "up")
	sh(t, "ip", "netns", "exec", tp.node, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	for i := 1; i <= n; i++ {
		p := &testPod{
			ns:     fmt.Sprintf("bwp%d-%s", i, tp.sfx),
			addr:   netip.MustParseAddr(fmt.Sprintf("10.200.%d.2", i)),
			addr6:  netip.MustParseAddr(fmt.Sprintf("fd00:200:%d::2", i)),
			hostIf: fmt.Sprintf("bwh%d%s", i, tp.sfx),
		}
		sh(t, "ip", "netns", "add", p.ns)
		ns := p.ns
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		sh(t, "ip", "-n", p.ns, "link", "set", "lo", "up")
		sh(t, "ip", "-n", tp.node, "link", "add", p.hostIf, "type", "veth", "peer", "name", "eth0", "netns", p.ns)
		sh(t, "ip", "-n", tp.node, "addr", "add", fmt.Sprintf("10.200.%d.1/24", i), "dev", p.hostIf)
		sh(t, "ip", "-n", tp.node, "link", "set", p.hostIf, "up")
		sh(t, "ip", "-n", p.ns, "addr", "add", fmt.Sprintf("10.200.%d.2/24", i), "dev", "eth0")
		sh(t, "ip", "-n", tp.node, "addr", "add", fmt.Sprintf("fd00:200:%d::1/64", i), "dev", p.hostIf, "nodad")
		sh(t, "ip", "-n", p.ns, "addr", "add", fmt.Sprintf("fd00:200:%d::2/64", i), "dev", "eth0", "nodad")
		sh(t, "ip", "-n", p.ns, "link", "set", "eth0", "up")
		out := sh(t, "ip", "netns", "exec", tp.node, "cat", "/sys/class/net/"+p.hostIf+"/ifindex")
		if _, err := fmt.Sscanf(strings.TrimSpace(out), "%d", &p.hostIndex); err != nil || p.hostIndex <= 0 {
			t.Fatalf("ifindex of %s: %q %v", p.hostIf, out, err)
		}
		tp.pods = append(tp.pods, p)
	}
	for i, p := range tp.pods {
		for j := range tp.pods {
			if i != j {
				sh(t, "ip", "-n", p.ns, "route", "add", fmt.Sprintf("10.200.%d.0/24", j+1), "via", fmt.Sprintf("10.200.%d.1", i+1))
				sh(t, "ip", "-n", p.ns, "-6", "route", "add", fmt.Sprintf("fd00:200:%d::/64", j+1), "via", fmt.Sprintf("fd00:200:%d::1", i+1))
			}
		}
	}
	return tp
}

func (tp *topology) endpoint(i int, id uint32) Endpoint {
	p := tp.pods[i]
	return Endpoint{ID: id, IfIndex: p.hostIndex, NetNSPath: nsPath(tp.node)}
}

// listenTCP serves a line echo on port inside the pod namespace (IPv4
// and IPv6).
func (tp *topology) listenTCP(i int, port int) {
	t := tp.t
	var ln net.Listener
	err := inNetNS(nsPath(tp.pods[i].ns), func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// listenUDP echoes datagrams on port inside the pod namespace.
func (tp *topology) listenUDP(i int, port int) {
	t := tp.t
	var pc net.PacketConn
	err := inNetNS(nsPath(tp.pods[i].ns), func() error {
		var err error
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("listen udp: %v", err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
}

// dialTCP connects from pod i to pod j over IPv4; the error is the
// connect's.
func (tp *topology) dialTCP(i, j int, port int) (net.Conn, error) {
	return tp.dialTCPTo(i, netip.AddrPortFrom(tp.pods[j].addr, uint16(port)))
}

func (tp *topology) dialTCPTo(i int, dst netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := inNetNS(nsPath(tp.pods[i].ns), func() error {
		var err error
		c, err = net.DialTimeout("tcp", dst.String(), 3*time.Second)
		return err
	})
	return c, err
}

// roundTrip sends a line and reads it back within a deadline.
func roundTrip(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != msg+"\n" {
		return fmt.Errorf("echo %q, want %q", line, msg)
	}
	return nil
}

// udpExchange sends one datagram from pod i to pod j and waits for the echo.
func (tp *topology) udpExchange(i, j int, port int) error {
	return tp.udpExchangeTo(i, netip.AddrPortFrom(tp.pods[j].addr, uint16(port)))
}

func (tp *topology) udpExchangeTo(i int, to netip.AddrPort) error {
	return tp.udpExchangeSize(i, to, 4)
}

// udpExchangeSize sends a datagram of size bytes (beyond the veth MTU it is
// fragmented) and waits for the full echo.
func (tp *topology) udpExchangeSize(i int, to netip.AddrPort, size int) error {
	var pc net.PacketConn
	err := inNetNS(nsPath(tp.pods[i].ns), func() error {
		var err error
		pc, err = net.ListenPacket("udp", ":0")
		return err
	})
	if err != nil {
		return err
	}
	defer pc.Close()
	dst := net.UDPAddrFromAddrPort(to)
	pc.SetDeadline(time.Now().Add(3 * time.Second))
	msg := []byte(strings.Repeat("ping", size/4+1)[:size])
	if _, err := pc.WriteTo(msg, dst); err != nil {
		return err
	}
	buf := make([]byte, size+64)
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != string(msg) {
		return fmt.Errorf("udp echo of %d bytes came back as %d bytes", size, n)
	}
	return nil
}

var icmpSeq struct {
	sync.Mutex
	n int
}

// ping sends one ICMP echo from pod i to pod j and waits for the reply.
func (tp *topology) ping(i, j int) error {
	var c *icmp.PacketConn
	err := inNetNS(nsPath(tp.pods[i].ns), func() error {
		var err error
		c, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	icmpSeq.Lock()
	icmpSeq.n++
	seq := icmpSeq.n
	icmpSeq.Unlock()
	id := os.Getpid() & 0xffff
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("bulwark")}}
	b, _ := msg.Marshal(nil)
	dst := &net.IPAddr{IP: tp.pods[j].addr.AsSlice()}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.WriteTo(b, dst); err != nil {
		return err
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return err
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && m.Type == ipv4.ICMPTypeEchoReply && e.Seq == seq && from.String() == dst.String() {
			return nil
		}
	}
}
