package tproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/proxy"
)

// UDP is the transparent UDP socket pair (IPv4, IPv6) of a datagram proxy
// (the DNS proxy): the datapath assigns redirected datagrams to it.
type UDP struct {
	opts  Options
	port  uint16
	ns    *nsRunner
	socks []*UDPSocket

	mu      sync.Mutex
	replies map[netip.AddrPort]*net.UDPConn // by original destination
}

// maxReplySockets bounds the reply sockets kept open (one per original
// destination, e.g. per DNS server address).
const maxReplySockets = 256

// UDPSocket is one family's socket of a UDP.
type UDPSocket struct {
	u *UDP
	c *net.UDPConn
}

// ListenUDP opens the transparent UDP sockets in the node's namespace.
func ListenUDP(opts Options) (*UDP, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	ns, err := newNSRunner(opts.NetNS)
	if err != nil {
		return nil, err
	}
	var v4, v6 *net.UDPConn
	var port uint16
	err = ns.do(func() error {
		lc := net.ListenConfig{Control: transparent(true)}
		var err error
		v4, v6, port, err = listenPair(opts.Port, opts.NoIPv6, "udp",
			func(network, addr string) (*net.UDPConn, error) {
				c, err := lc.ListenPacket(context.Background(), network, addr)
				if err != nil {
					return nil, err
				}
				return c.(*net.UDPConn), nil
			},
			func(c *net.UDPConn) uint16 { return uint16(c.LocalAddr().(*net.UDPAddr).Port) },
			func(c *net.UDPConn) { c.Close() })
		return err
	})
	if err != nil {
		ns.close()
		return nil, fmt.Errorf("tproxy listen udp: %w", err)
	}
	u := &UDP{opts: opts, port: port, ns: ns, replies: map[netip.AddrPort]*net.UDPConn{}}
	u.socks = append(u.socks, &UDPSocket{u: u, c: v4})
	if v6 != nil {
		u.socks = append(u.socks, &UDPSocket{u: u, c: v6})
	}
	return u, nil
}

// Port is the sockets' port (the datapath's proxy port).
func (u *UDP) Port() uint16 { return u.port }

// Sockets are the IPv4 socket and, unless NoIPv6, the IPv6 one: read each
// in its own goroutine.
func (u *UDP) Sockets() []*UDPSocket { return u.socks }

// Close closes the sockets: redirected datagrams then find no socket and
// the datapath drops them.
func (u *UDP) Close() error {
	var errs []error
	for _, s := range u.socks {
		errs = append(errs, s.c.Close())
	}
	u.mu.Lock()
	for k, c := range u.replies {
		c.Close()
		delete(u.replies, k)
	}
	u.mu.Unlock()
	u.ns.close()
	return errors.Join(errs...)
}

// ReadFrom reads one redirected datagram into b and the flow it belongs to
// (its original source and destination, from IP_RECVORIGDSTADDR).
func (s *UDPSocket) ReadFrom(b []byte) (int, proxy.Flow, error) {
	oob := make([]byte, 128)
	for {
		n, oobn, _, src, err := s.c.ReadMsgUDPAddrPort(b, oob)
		if err != nil {
			return 0, proxy.Flow{}, err
		}
		dst, ok := origDst(oob[:oobn])
		if !ok {
			continue // not a redirected datagram (sent to the port itself)
		}
		return n, flowOf(src, dst, resolved.ProtoUDP, s.u.opts.Identities), nil
	}
}

// origDst parses the IP(V6)_ORIGDSTADDR control message.
func origDst(oob []byte) (netip.AddrPort, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.AddrPort{}, false
	}
	for _, m := range msgs {
		d := m.Data
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(d) >= 8:
			a, _ := netip.AddrFromSlice(d[4:8])
			return netip.AddrPortFrom(a, binary.BigEndian.Uint16(d[2:4])), true
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_ORIGDSTADDR && len(d) >= 24:
			a, _ := netip.AddrFromSlice(d[8:24])
			return netip.AddrPortFrom(a, binary.BigEndian.Uint16(d[2:4])), true
		}
	}
	return netip.AddrPort{}, false
}

// Reply sends b to f.Src from f.Dst (the original destination), so that
// the source sees the answer come from where it sent the question.
func (s *UDPSocket) Reply(b []byte, f proxy.Flow) error {
	c, err := s.u.replySocket(f.Dst)
	if err != nil {
		return err
	}
	dst := f.Src
	if f.Dst.Addr().Is4() {
		dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	}
	if _, err := c.WriteToUDPAddrPort(b, dst); err != nil {
		return fmt.Errorf("reply to %s from %s: %w", f.Src, f.Dst, err)
	}
	return nil
}

// replySocket is a transparent UDP socket bound to from (kept for later
// replies).
func (u *UDP) replySocket(from netip.AddrPort) (*net.UDPConn, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if c, ok := u.replies[from]; ok {
		return c, nil
	}
	if len(u.replies) >= maxReplySockets {
		for k, c := range u.replies { // evict one
			c.Close()
			delete(u.replies, k)
			break
		}
	}
	network := "udp4"
	if from.Addr().Is6() {
		network = "udp6"
	}
	var c *net.UDPConn
	err := u.ns.do(func() error {
		lc := net.ListenConfig{Control: transparent(true)}
		pc, err := lc.ListenPacket(context.Background(), network, from.String())
		if err != nil {
			return err
		}
		c = pc.(*net.UDPConn)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open reply socket on %s: %w", from, err)
	}
	u.replies[from] = c
	return c, nil
}
