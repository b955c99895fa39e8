package dns

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/miekg/dns"

	"github.com/bulwark-net/bulwark/internal/proxy"
)

// tcpIdle closes a client's TCP connection after this long without a query.
const tcpIdle = 10 * time.Second

// ServeConn answers the queries of one redirected TCP connection until the
// client closes it, goes idle, or ctx ends.
func (p *Proxy) ServeConn(ctx context.Context, c net.Conn, f proxy.Flow) error {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	for {
		c.SetReadDeadline(time.Now().Add(tcpIdle))
		b, err := readMsg(c, true)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || errors.Is(err, context.Canceled) {
				return nil
			}
			return nil // EOF, idle or reset: the client is gone
		}
		q := new(dns.Msg)
		if err := q.Unpack(b); err != nil {
			p.malformed(f, err)
			return nil
		}
		ans := p.Handle(ctx, f, q)
		out, err := ans.Pack()
		if err != nil {
			return err
		}
		c.SetWriteDeadline(time.Now().Add(tcpIdle))
		if err := writeMsg(c, true, out); err != nil {
			return nil
		}
	}
}

// HandleDatagram answers one redirected UDP query; ok is false when there
// is nothing to send (the datagram was not a DNS query). The answer fits
// the client's advertised UDP size (512 bytes without EDNS0), truncated
// with the TC bit otherwise, so the client retries over TCP.
func (p *Proxy) HandleDatagram(ctx context.Context, f proxy.Flow, b []byte) (reply []byte, ok bool) {
	q := new(dns.Msg)
	if err := q.Unpack(b); err != nil {
		p.malformed(f, err)
		return nil, false
	}
	ans := p.Handle(ctx, f, q)
	size := dns.MinMsgSize
	if o := q.IsEdns0(); o != nil && int(o.UDPSize()) > size {
		size = int(o.UDPSize())
	}
	ans.Truncate(size)
	out, err := ans.Pack()
	if err != nil {
		return nil, false
	}
	return out, true
}

func (p *Proxy) malformed(f proxy.Flow, err error) {
	p.record(proxy.Record{Flow: f, Type: proxy.Request, Verdict: proxy.Error, Reason: "malformed DNS message: " + err.Error(), DNS: &proxy.DNS{}})
	p.opts.Metrics.request("error", 0, 0)
}

// ServeUDP answers queries arriving on pc, which is not transparent: flowOf
// says which flow a client's datagram belongs to (its original
// destination), and false drops the datagram. Each query is handled on
// its own goroutine; answers go back from pc. It returns when pc is closed.
func (p *Proxy) ServeUDP(ctx context.Context, pc net.PacketConn, flowOf func(src net.Addr) (proxy.Flow, bool)) error {
	buf := make([]byte, 65535)
	for {
		n, src, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		f, ok := flowOf(src)
		if !ok {
			continue
		}
		b := append([]byte(nil), buf[:n]...)
		go func() {
			if out, ok := p.HandleDatagram(ctx, f, b); ok {
				pc.WriteTo(out, src)
			}
		}()
	}
}
