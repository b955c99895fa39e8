package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/proxy"
)

// DialerUpstream forwards queries over connections that a proxy.Dialer
// opens as the flow's original source (so the server's ingress policy
// judges the pod, not the proxy): one connection per query, UDP datagrams
// for UDP flows, length-prefixed messages for TCP flows.
type DialerUpstream struct {
	Dialer proxy.Dialer
}

// Exchange implements Upstream.
func (u DialerUpstream) Exchange(ctx context.Context, f proxy.Flow, q *dns.Msg) (*dns.Msg, error) {
	c, err := u.Dialer.DialUpstream(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", f.Dst, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	} else {
		c.SetDeadline(time.Now().Add(5 * time.Second))
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	return exchangeConn(c, f.Protocol == resolved.ProtoTCP, q)
}

// exchangeConn writes q and reads the answer with q's ID and question.
func exchangeConn(c net.Conn, stream bool, q *dns.Msg) (*dns.Msg, error) {
	b, err := q.Pack()
	if err != nil {
		return nil, fmt.Errorf("pack query: %w", err)
	}
	if err := writeMsg(c, stream, b); err != nil {
		return nil, fmt.Errorf("send query: %w", err)
	}
	for {
		rb, err := readMsg(c, stream)
		if err != nil {
			return nil, fmt.Errorf("read answer: %w", err)
		}
		m := new(dns.Msg)
		if err := m.Unpack(rb); err != nil {
			if stream {
				return nil, fmt.Errorf("unpack answer: %w", err)
			}
			continue // a stray datagram: keep waiting for ours
		}
		if m.Id != q.Id || !m.Response || !sameQuestion(m, q) {
			if stream {
				return nil, errors.New("answer does not match the query")
			}
			continue
		}
		return m, nil
	}
}

func sameQuestion(a, q *dns.Msg) bool {
	if len(a.Question) != len(q.Question) {
		return len(a.Question) == 0 // some servers omit it on errors
	}
	for i := range q.Question {
		x, y := a.Question[i], q.Question[i]
		if x.Qtype != y.Qtype || x.Qclass != y.Qclass || !equalFold(x.Name, y.Name) {
			return false
		}
	}
	return true
}

func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// datagramBufs are read buffers of the largest datagram (not a global
// setting: a pool of scratch memory).
var datagramBufs = sync.Pool{New: func() any { b := make([]byte, 65535); return &b }}

// writeMsg writes one message: a datagram, or a length-prefixed message
// on a stream.
func writeMsg(w io.Writer, stream bool, b []byte) error {
	if !stream {
		_, err := w.Write(b)
		return err
	}
	if len(b) > 0xffff {
		return errors.New("message too long")
	}
	buf := make([]byte, 2+len(b))
	binary.BigEndian.PutUint16(buf, uint16(len(b)))
	copy(buf[2:], b)
	_, err := w.Write(buf)
	return err
}

// readMsg reads one message (see writeMsg).
func readMsg(r io.Reader, stream bool) ([]byte, error) {
	if !stream {
		bp := datagramBufs.Get().(*[]byte)
		defer datagramBufs.Put(bp)
		n, err := r.Read(*bp)
		if err != nil {
			return nil, err
		}
		return append([]byte(nil), (*bp)[:n]...), nil
	}
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	buf := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, err
	}
	return buf, nil
}
