package httpproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/bulwark-net/bulwark/internal/proxy"
)

// HTTP/1.1 fast path. An HTTP/1.1 client connection gets its own upstream
// connection (dialled on its first allowed request, or taken idle from
// the previous client connection of the same source, identity and
// destination; kept while both ends keep alive), and each request is
// written and its response read on the handler's goroutine: no pool
// hand-off between goroutines, which is most of a reverse proxy's added
// latency on a loaded machine. Upgrades (WebSocket) take the general path
// (httputil.ReverseProxy).

// upstream1 is a client connection's HTTP/1.1 upstream connection. It is
// used by one request at a time (the server serves a connection's requests
// in order).
type upstream1 struct {
	conn net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	used bool // carried a request already: a failure may be a stale keep-alive
}

// hopHeaders are removed from forwarded messages (RFC 9110 section 7.6.1),
// besides the headers the Connection header names.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func removeHopHeaders(h http.Header) {
	for _, v := range h["Connection"] {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// isUpgrade reports whether r asks to switch protocols.
func isUpgrade(r *http.Request) bool {
	return httpguts.HeaderValuesContainsToken(r.Header["Connection"], "Upgrade")
}

// forward1 forwards an allowed HTTP/1.x request over the client
// connection's upstream connection and copies the response back.
func (p *Proxy) forward1(w http.ResponseWriter, r *http.Request, st *reqState) {
	// The lean path's request is the proxy's own: its header is forwarded
	// in place. http.Server's requests are not to be modified.
	header := r.Header
	if _, lean := w.(*rw1); !lean {
		header = header.Clone()
	}
	if st.cs.dst == "" {
		st.cs.dst = st.cs.flow.Dst.String()
	}
	out := &http.Request{
		Method:        r.Method,
		URL:           &url.URL{Scheme: "http", Host: st.cs.dst, Opaque: st.path, RawQuery: st.query},
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        header,
		Host:          st.host,
		ContentLength: r.ContentLength,
		Trailer:       r.Trailer,
	}
	if r.ContentLength != 0 {
		out.Body = r.Body
	}
	removeHopHeaders(out.Header)
	out.Header.Del("Host")
	if httpguts.HeaderValuesContainsToken(r.Header["Te"], "trailers") {
		out.Header.Set("Te", "trailers")
	}
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header["User-Agent"] = []string{""} // Request.Write adds none then
	}
	if mism := applyActions(st.actions, out.Header); len(mism) > 0 {
		st.rec.Reason = "header mismatch: " + strings.Join(mism, ", ")
	}
	p.record(st.rec)
	st.forwardedAt = time.Now()

	// A client that goes away ends the exchange with the backend too. (On
	// the lean HTTP/1.1 path the request context is never cancelled: the
	// connection's own watcher, serve1, does this for the whole connection.)
	if r.Context().Done() != nil {
		stop := context.AfterFunc(r.Context(), func() {
			if c := st.upConn.Load(); c != nil {
				_ = (*c).SetDeadline(time.Unix(1, 0))
			}
		})
		defer func() {
			if !stop() {
				st.cs.closeUpstream1() // its deadline is in the past
			}
		}()
	}
	resp, err := p.roundTrip1(st, out)
	if err != nil {
		p.answerUpstreamError(w, r, st, err)
		return
	}
	p.recordResponse(st, resp)
	h := w.Header()
	for k, vs := range resp.Header {
		h[k] = vs
	}
	removeHopHeaders(h)
	if _, ok := h["Content-Type"]; !ok {
		h["Content-Type"] = nil // no sniffed type the backend did not send
	}
	if len(resp.Trailer) > 0 {
		names := make([]string, 0, len(resp.Trailer))
		for k := range resp.Trailer {
			names = append(names, k)
		}
		h["Trailer"] = []string{strings.Join(names, ", ")}
	}
	w.WriteHeader(resp.StatusCode)
	flush := resp.ContentLength == -1
	rc := http.NewResponseController(w)
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	var copyErr error
	for {
		n, rerr := resp.Body.Read(*bp)
		if n > 0 {
			if _, werr := w.Write((*bp)[:n]); werr != nil {
				copyErr = werr
				break
			}
			if flush {
				_ = rc.Flush()
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			copyErr = rerr
			break
		}
	}
	resp.Body.Close()
	for k, vs := range resp.Trailer {
		h[http.TrailerPrefix+k] = vs
	}
	if copyErr != nil || resp.Close || out.Close {
		st.cs.closeUpstream1()
	}
	if copyErr != nil {
		panic(http.ErrAbortHandler) // the response is cut short: the client must see it
	}
}

// roundTrip1 writes out and reads its response, dialling the upstream
// connection when there is none; a request without a body that fails on a
// reused connection before any response byte is retried once on a new one
// (the backend closed an idle keep-alive connection).
func (p *Proxy) roundTrip1(st *reqState, out *http.Request) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		up, err := st.cs.upstream1(p, st)
		if err != nil {
			return nil, err
		}
		st.upConn.Store(&up.conn)
		retryable := up.used && out.Body == nil && attempt == 0
		up.used = true
		if err := out.Write(up.bw); err == nil {
			err = up.bw.Flush()
		}
		if err != nil {
			st.cs.closeUpstream1()
			if retryable {
				continue
			}
			return nil, fmt.Errorf("write request: %w", err)
		}
		for {
			resp, err := http.ReadResponse(up.br, out)
			if err != nil {
				st.cs.closeUpstream1()
				if retryable && errors.Is(err, io.EOF) || retryable && errors.Is(err, io.ErrUnexpectedEOF) && up.br.Buffered() == 0 {
					break
				}
				return nil, fmt.Errorf("read response: %w", err)
			}
			if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
				continue // 100 Continue and other interim answers: the final one follows
			}
			if resp.StatusCode == http.StatusSwitchingProtocols {
				st.cs.closeUpstream1()
				return nil, errors.New("upstream switched protocols without an upgrade request")
			}
			return resp, nil
		}
	}
}

func (cs *connState) upstream1(p *Proxy, st *reqState) (*upstream1, error) {
	if cs.up != nil {
		return cs.up, nil
	}
	if up := p.idle1.take(idleKey(cs.flow)); up != nil {
		cs.up = up
		cs.live.Store(up)
		return up, nil
	}
	ctx := cs.ctx
	c, err := p.opts.Dialer.DialUpstream(ctx, cs.flow)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", cs.flow.Dst, err)
	}
	br := readers.Get().(*bufio.Reader)
	br.Reset(c)
	bw := writers.Get().(*bufio.Writer)
	bw.Reset(c)
	cs.up = &upstream1{conn: c, br: br, bw: bw}
	cs.live.Store(cs.up)
	return cs.up, nil
}

// Buffers of closed upstream connections are reused: with a new client
// connection per request they would otherwise be most of the garbage.
var (
	readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

func (cs *connState) closeUpstream1() {
	if up := cs.up; up != nil {
		cs.up = nil
		cs.live.Store(nil)
		up.close()
	}
}

func (up *upstream1) close() {
	up.conn.Close()
	up.br.Reset(nil)
	up.bw.Reset(nil)
	readers.Put(up.br)
	writers.Put(up.bw)
}

// releaseUpstream1 ends a client connection's use of its upstream
// connection: one that finished every exchange cleanly is kept for the
// next client connection of the same source and identity to the same
// destination (idlePool); any other is closed.
func (p *Proxy) releaseUpstream1(cs *connState) {
	up := cs.up
	if up == nil {
		return
	}
	if cs.ctx.Err() != nil || p.ctx.Err() != nil || up.br.Buffered() > 0 || up.bw.Buffered() > 0 {
		cs.closeUpstream1()
		return
	}
	cs.up = nil
	cs.live.Store(nil)
	p.idle1.put(idleKey(cs.flow), up)
}

func idleKey(f proxy.Flow) poolKey {
	return poolKey{src: f.Src.Addr(), srcID: f.SrcIdentity, dst: f.Dst}
}

// Idle upstream connections, kept between client connections: a new
// connection per request would otherwise dial the backend per request.
const (
	maxIdlePerKey = 32
	maxIdle       = 1024
	idleUpTimeout = 30 * time.Second
)

// idlePool holds HTTP/1.1 upstream connections between client connections,
// per (original source address, source identity, original destination):
// a connection only ever carries requests of the one source identity and
// address it was dialled for, to the destination it was dialled to.
type idlePool struct {
	mu     sync.Mutex
	m      map[poolKey][]idleUp
	n      int
	closed bool
}

type idleUp struct {
	up    *upstream1
	since time.Time
}

func newIdlePool() *idlePool { return &idlePool{m: map[poolKey][]idleUp{}} }

// take returns the most recently idle live connection of k, or nil.
func (ip *idlePool) take(k poolKey) *upstream1 {
	for {
		ip.mu.Lock()
		l := ip.m[k]
		if len(l) == 0 {
			ip.mu.Unlock()
			return nil
		}
		e := l[len(l)-1]
		l[len(l)-1] = idleUp{}
		if l = l[:len(l)-1]; len(l) == 0 {
			delete(ip.m, k)
		} else {
			ip.m[k] = l
		}
		ip.n--
		ip.mu.Unlock()
		if time.Since(e.since) < idleUpTimeout && quiet(e.up.conn) {
			return e.up
		}
		e.up.close()
	}
}

func (ip *idlePool) put(k poolKey, up *upstream1) {
	ip.mu.Lock()
	if ip.closed || ip.n >= maxIdle || len(ip.m[k]) >= maxIdlePerKey {
		ip.mu.Unlock()
		up.close()
		return
	}
	ip.m[k] = append(ip.m[k], idleUp{up: up, since: time.Now()})
	ip.n++
	ip.mu.Unlock()
}

// expire closes the connections idle for longer than idleUpTimeout (all
// of them when all is set, and then keeps none from now on).
func (ip *idlePool) expire(all bool) {
	var old []*upstream1
	now := time.Now()
	ip.mu.Lock()
	ip.closed = ip.closed || all
	for k, l := range ip.m {
		keep := l[:0]
		for _, e := range l {
			if all || now.Sub(e.since) >= idleUpTimeout {
				old = append(old, e.up)
				ip.n--
			} else {
				keep = append(keep, e)
			}
		}
		clear(l[len(keep):])
		if len(keep) == 0 {
			delete(ip.m, k)
		} else {
			ip.m[k] = keep
		}
	}
	ip.mu.Unlock()
	for _, up := range old {
		up.close()
	}
}

// quiet reports whether an idle connection is still open with nothing to
// read: a backend that closed it, or sent bytes nobody asked for, makes it
// unusable. (A connection that is not a socket is trusted; the retry of
// roundTrip1 covers a close that races this check.)
func quiet(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ok = false
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		ok = n <= 0 && rerr == syscall.EAGAIN
		return true
	})
	return err == nil && ok
}
