package tproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/bulwark-net/bulwark/internal/datapath"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/proxy"
)

// Options configure the transparent sockets.
type Options struct {
	// NetNS is the path of the node's network namespace, where the
	// datapath looks sockets up; "" = the caller's.
	NetNS string
	// Identities resolves the original addresses' identities. Required.
	Identities IdentityFunc
	// Port to listen on; 0 = an ephemeral port (the same for IPv4 and
	// IPv6).
	Port uint16
	// NoIPv6 listens on IPv4 only (a namespace without IPv6).
	NoIPv6 bool
}

func (o Options) validate() error {
	if o.Identities == nil {
		return errors.New("tproxy: Options.Identities is required")
	}
	return nil
}

// transparent sets IP_TRANSPARENT / IPV6_TRANSPARENT (and, for UDP, the
// original destination's ancillary data) on a socket before bind.
func transparent(recvOrigDst bool) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			v6 := network == "tcp6" || network == "udp6"
			if v6 {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
				if serr == nil && recvOrigDst {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR, 1)
				}
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
				if serr == nil && recvOrigDst {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 1)
				}
			}
			if serr == nil && recvOrigDst {
				// reply sockets bind the original destination, which
				// several replies share
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			}
		})
		if err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("set transparent socket options: %w", serr)
		}
		return nil
	}
}

// listenPair opens a v4 and (unless noV6) a v6 socket on the same port
// (port 0: the first ephemeral port free in both), with open(network,
// address).
func listenPair[T any](port uint16, noV6 bool, proto string, open func(network, addr string) (T, error),
	portOf func(T) uint16, closeT func(T)) (v4, v6 T, _ uint16, err error) {
	var zero T
	for attempt := 0; attempt < 20; attempt++ {
		a, err := open(proto+"4", fmt.Sprintf("0.0.0.0:%d", port))
		if err != nil {
			return zero, zero, 0, fmt.Errorf("listen %s4 on port %d: %w", proto, port, err)
		}
		p := portOf(a)
		if noV6 {
			return a, zero, p, nil
		}
		b, err := open(proto+"6", fmt.Sprintf("[::]:%d", p))
		if err == nil {
			return a, b, p, nil
		}
		closeT(a)
		if port != 0 || !errors.Is(err, unix.EADDRINUSE) {
			return zero, zero, 0, fmt.Errorf("listen %s6 on port %d: %w", proto, p, err)
		}
	}
	return zero, zero, 0, fmt.Errorf("listen %s: no port free for both IPv4 and IPv6", proto)
}

// Listener is the transparent TCP listener of an L7 proxy.
type Listener struct {
	opts     Options
	port     uint16
	lns      []net.Listener
	conns    chan accepted
	done     chan struct{}
	closeOne sync.Once
	wg       sync.WaitGroup
}

type accepted struct {
	c   net.Conn
	err error
}

// Listen opens the transparent listener in the node's namespace.
func Listen(opts Options) (*Listener, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	ns, err := newNSRunner(opts.NetNS)
	if err != nil {
		return nil, err
	}
	defer ns.close()
	var v4, v6 net.Listener
	var port uint16
	err = ns.do(func() error {
		lc := net.ListenConfig{Control: transparent(false)}
		var err error
		v4, v6, port, err = listenPair(opts.Port, opts.NoIPv6, "tcp",
			func(network, addr string) (net.Listener, error) {
				return lc.Listen(context.Background(), network, addr)
			},
			func(l net.Listener) uint16 { return uint16(l.Addr().(*net.TCPAddr).Port) },
			func(l net.Listener) { l.Close() })
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("tproxy listen: %w", err)
	}
	l := &Listener{opts: opts, port: port, conns: make(chan accepted), done: make(chan struct{})}
	l.lns = append(l.lns, v4)
	if v6 != nil {
		l.lns = append(l.lns, v6)
	}
	for _, ln := range l.lns {
		l.wg.Add(1)
		go l.acceptLoop(ln)
	}
	return l, nil
}

func (l *Listener) acceptLoop(ln net.Listener) {
	defer l.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil && isTemporary(err) {
			continue
		}
		select {
		case l.conns <- accepted{c, err}:
		case <-l.done:
			if c != nil {
				c.Close()
			}
			return
		}
		if err != nil {
			return
		}
	}
}

func isTemporary(err error) bool {
	return errors.Is(err, unix.ECONNABORTED) || errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE)
}

// Port is the listener's port (the datapath's proxy port).
func (l *Listener) Port() uint16 { return l.port }

// Accept waits for the next redirected connection: the connection to the
// original source (its local address is the original destination) and the
// flow as the datapath saw it.
func (l *Listener) Accept() (net.Conn, proxy.Flow, error) {
	select {
	case a := <-l.conns:
		if a.err != nil {
			return nil, proxy.Flow{}, a.err
		}
		return a.c, l.flowOf(a.c), nil
	case <-l.done:
		return nil, proxy.Flow{}, net.ErrClosed
	}
}

func (l *Listener) flowOf(c net.Conn) proxy.Flow {
	src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	dst := c.LocalAddr().(*net.TCPAddr).AddrPort()
	return flowOf(src, dst, resolved.ProtoTCP, l.opts.Identities)
}

func flowOf(src, dst netip.AddrPort, proto resolved.Protocol, ids IdentityFunc) proxy.Flow {
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	return proxy.Flow{Src: src, Dst: dst, Protocol: proto, SrcIdentity: ids(src.Addr()), DstIdentity: ids(dst.Addr())}
}

// Close stops listening; accepted connections stay open. New redirected
// connections then find no listener and the datapath drops them.
func (l *Listener) Close() error {
	var errs []error
	l.closeOne.Do(func() {
		close(l.done)
		for _, ln := range l.lns {
			errs = append(errs, ln.Close())
		}
	})
	l.wg.Wait()
	return errors.Join(errs...)
}

// Dialer opens the proxies' upstream connections (proxy.Dialer).
type Dialer struct {
	ns *nsRunner
}

// NewDialer dials from the namespace at nsPath ("" = the caller's).
func NewDialer(nsPath string) (*Dialer, error) {
	ns, err := newNSRunner(nsPath)
	if err != nil {
		return nil, err
	}
	return &Dialer{ns: ns}, nil
}

// DialUpstream connects to f.Dst (TCP, or UDP for a datagram flow) from
// the node, marked with f.SrcIdentity: the destination's ingress policy
// judges it as the original source, and it is never redirected again.
func (d *Dialer) DialUpstream(ctx context.Context, f proxy.Flow) (net.Conn, error) {
	network := "tcp"
	switch f.Protocol {
	case resolved.ProtoTCP:
	case resolved.ProtoUDP:
		network = "udp"
	default:
		return nil, fmt.Errorf("dial upstream %s: protocol %s is not proxied", f.Dst, f.Protocol)
	}
	mark := int(datapath.ProxyIdentityMark(f.SrcIdentity))
	nd := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark) }); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("set SO_MARK: %w", serr)
		}
		return nil
	}}
	var c net.Conn
	err := d.ns.do(func() error {
		var err error
		c, err = nd.DialContext(ctx, network, f.Dst.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial upstream %s as identity %d: %w", f.Dst, f.SrcIdentity, err)
	}
	return c, nil
}

// Close stops the dialer's namespace threads; open connections stay.
func (d *Dialer) Close() { d.ns.close() }
