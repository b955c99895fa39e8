package httpproxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Lean HTTP/1.1 serving. ServeConn serves a client connection itself, on
// its own goroutine, as long as every request is a plain HTTP/1.x request:
// parsed by net/http's own parser (http.ReadRequest: the same framing
// rules, CL/TE and header checks as http.Server), checked as http.Server
// checks a request before its handler, then decided and forwarded by the
// same serveRequest as every other request. This saves what http.Server
// costs per request on top of that (a background reader goroutine, a
// cancelable context, the listener hand-off per connection).
//
// Anything else — an HTTP/2 preface, a request that does not parse, an
// Upgrade (h2c or WebSocket), Expect, CONNECT, a missing or repeated Host,
// an invalid header — is handed, together with every byte read since the
// start of that request, to the http.Server, which serves the rest of the
// connection exactly as before (and answers malformed requests itself).
// The invariant: a request the lean path serves is one http.Server would
// have accepted and read the same way.

const (
	idleTimeout       = 10 * time.Minute
	readHeaderTimeout = 30 * time.Second
	// maxDrainBody bounds how much of an unread request body is discarded
	// to keep a connection; beyond it the connection is closed (as
	// http.Server does).
	maxDrainBody = 256 << 10
)

// h2Preface is what an HTTP/2 prior-knowledge client sends first.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// maxCapture bounds a request header on the lean path, as
// http.Server.MaxHeaderBytes (plus its 4 KiB slack) bounds it.
const maxCapture = maxHeaderBytes + 4<<10

var errHeaderTooLarge = errors.New("request header too large")

// captureConn records what is read from the client connection while a
// request's header is parsed, so that the request can be handed to the
// http.Server unread; past maxCapture it reads no more (the http.Server
// then answers 431 to the replayed bytes).
type captureConn struct {
	net.Conn
	capturing bool
	buf       []byte
}

func (c *captureConn) Read(b []byte) (int, error) {
	if c.capturing && len(c.buf) >= maxCapture {
		return 0, errHeaderTooLarge
	}
	n, err := c.Conn.Read(b)
	if c.capturing && n > 0 {
		c.buf = append(c.buf, b[:n]...)
	}
	return n, err
}

// replayConn reads replay first, then the connection.
type replayConn struct {
	net.Conn
	replay []byte
}

func (c *replayConn) Read(b []byte) (int, error) {
	if len(c.replay) > 0 {
		n := copy(b, c.replay)
		c.replay = c.replay[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// conn1 is the per-connection state of the lean path, pooled.
type conn1 struct {
	cc captureConn
	br *bufio.Reader
	bw *bufio.Writer
	w  rw1
}

var conn1s = sync.Pool{New: func() any {
	c := &conn1{w: rw1{h: make(http.Header, 8)}}
	c.br = bufio.NewReaderSize(&c.cc, 4<<10)
	c.bw = bufio.NewWriterSize(&c.cc, 4<<10)
	return c
}}

// serve1 serves client until it closes or needs the http.Server; then it
// returns the connection to hand over (reading first what was consumed of
// its pending request), else nil: the caller closes client.
func (p *Proxy) serve1(ctx context.Context, client net.Conn, cs *connState) net.Conn {
	c := conn1s.Get().(*conn1)
	c.cc = captureConn{Conn: client, buf: c.cc.buf[:0]}
	c.br.Reset(&c.cc)
	c.bw.Reset(&c.cc)
	defer func() {
		c.cc.Conn = nil
		c.br.Reset(nil)
		c.bw.Reset(nil)
		c.w = rw1{h: c.w.h}
		clear(c.w.h)
		if cap(c.cc.buf) <= 64<<10 {
			conn1s.Put(c)
		}
	}()
	lastPOST := false
	for {
		if c.br.Buffered() == 0 {
			setReadDeadline(ctx, p.ctx, client, time.Now().Add(idleTimeout))
			if _, err := c.br.Peek(1); err != nil {
				return nil
			}
		}
		if lastPOST {
			// RFC 9112 section 2.2 tolerance for old clients, as http.Server.
			peek, _ := c.br.Peek(min(4, c.br.Buffered()))
			n := 0
			for n < len(peek) && (peek[n] == '\r' || peek[n] == '\n') {
				n++
			}
			_, _ = c.br.Discard(n)
			lastPOST = false
			if c.br.Buffered() == 0 {
				continue
			}
		}
		setReadDeadline(ctx, p.ctx, client, time.Now().Add(readHeaderTimeout))
		// Start capturing: what is buffered, then what is read.
		pending, _ := c.br.Peek(c.br.Buffered())
		c.cc.buf = append(c.cc.buf[:0], pending...)
		c.cc.capturing = true
		if !p.isHTTP1Start(c) {
			return c.handOff()
		}
		req, err := http.ReadRequest(c.br)
		if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
			return nil // too slow a header (or the proxy is closing)
		}
		if err != nil || !plainRequest(req) {
			return c.handOff()
		}
		c.cc.capturing = false
		lastPOST = req.Method == http.MethodPost
		if req.Body != http.NoBody {
			// The body is read without a deadline, as http.Server reads
			// it; a request without one keeps the header's until the
			// next wait.
			setReadDeadline(ctx, p.ctx, client, time.Time{})
		}
		if !p.serveOne(c, req, cs) {
			return nil
		}
	}
}

func (c *conn1) handOff() net.Conn {
	replay := append([]byte(nil), c.cc.buf...)
	return &replayConn{Conn: c.cc.Conn, replay: replay}
}

// isHTTP1Start reports whether the buffered bytes cannot be an HTTP/2
// preface (reading more while they still could).
func (p *Proxy) isHTTP1Start(c *conn1) bool {
	for n := c.br.Buffered(); ; n++ {
		b, err := c.br.Peek(n)
		if len(b) > len(h2Preface) {
			b = b[:len(h2Preface)]
		}
		if !strings.HasPrefix(h2Preface, string(b)) {
			return true
		}
		if len(b) == len(h2Preface) || err != nil {
			return false
		}
	}
}

// plainRequest reports whether http.Server would accept req as the lean
// path serves it (see serve1).
func plainRequest(req *http.Request) bool {
	if req.ProtoMajor != 1 || req.ProtoMinor > 1 || req.Method == http.MethodConnect || req.Method == "PRI" {
		return false
	}
	// http.ReadRequest has refused a repeated Host and removed the
	// header; an origin-form target's authority is its value. An
	// absolute-form target, whose Host header http.Server still checks, and
	// a missing or invalid Host are the server's to answer.
	if req.Host == "" || req.URL.Host != "" || !strings.HasPrefix(req.RequestURI, "/") || !httpguts.ValidHostHeader(req.Host) {
		return false
	}
	if _, ok := req.Header["Expect"]; ok {
		return false
	}
	if _, ok := req.Header["Upgrade"]; ok {
		return false
	}
	for k, vs := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return false
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	return true
}

// serveOne answers one request; it reports whether the connection stays
// open for the next.
func (p *Proxy) serveOne(c *conn1, req *http.Request, cs *connState) (keep bool) {
	w := &c.w
	w.reset(c.bw, req)
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				panic(v)
			}
			keep = false
		}
	}()
	p.serveRequest(w, req, cs)
	if !w.finish() {
		return false
	}
	// What the handler left of the body is discarded, up to a bound.
	if req.Body != nil && req.Body != http.NoBody {
		n, err := io.CopyN(io.Discard, req.Body, maxDrainBody+1)
		if n > maxDrainBody {
			lingerClose(c.cc.Conn)
			return false
		}
		if err != nil && err != io.EOF && err != http.ErrBodyReadAfterClose {
			return false
		}
	}
	return !w.closeAfter
}

// lingerClose prepares closing a connection whose client is still
// sending: closing with unread bytes would reset it and could destroy the
// answer before the client reads it, so the answer is followed by a FIN
// and what arrives in the next 500 ms is discarded (as http.Server does).
func lingerClose(c net.Conn) {
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 4<<20))
}

// rw1 is the lean path's http.ResponseWriter: HTTP/1.1 framing of what
// the handler writes (Content-Length when the handler set it, chunked
// otherwise, close-delimited for HTTP/1.0 clients).
type rw1 struct {
	bw          *bufio.Writer
	req         *http.Request
	h           http.Header
	wroteHeader bool
	status      int
	bodyless    bool // HEAD, 1xx, 204, 304
	chunked     bool
	cl          int64 // declared Content-Length, or -1
	written     int64
	closeAfter  bool
	trailers    []string // announced in the Trailer header
	err         error
}

func (w *rw1) reset(bw *bufio.Writer, req *http.Request) {
	h := w.h
	clear(h)
	*w = rw1{bw: bw, req: req, h: h, cl: -1, closeAfter: req.Close}
}

func (w *rw1) Header() http.Header { return w.h }

func (w *rw1) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	w.wroteHeader, w.status = true, code
	h := w.h
	w.bodyless = w.req.Method == http.MethodHead || code < 200 || code == http.StatusNoContent || code == http.StatusNotModified
	if vs := h["Connection"]; len(vs) > 0 && httpguts.HeaderValuesContainsToken(vs, "close") {
		w.closeAfter = true
	}
	delete(h, "Connection")
	delete(h, "Transfer-Encoding")
	if vs := h["Content-Length"]; len(vs) > 0 {
		n, err := strconv.ParseInt(vs[0], 10, 64)
		if err != nil || n < 0 || len(vs) > 1 {
			delete(h, "Content-Length")
		} else {
			w.cl = n
		}
	}
	if !w.bodyless && w.cl < 0 {
		if w.req.ProtoAtLeast(1, 1) {
			w.chunked = true
		} else {
			w.closeAfter = true // the end of the body is the end of the connection
		}
	}
	bw := w.bw
	bw.WriteString("HTTP/1.1 ")
	bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(code), 10))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(code))
	bw.WriteString("\r\n")
	for k, vs := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		for _, v := range vs {
			writeHeaderLine(bw, k, v)
		}
	}
	if _, ok := h["Date"]; !ok {
		bw.WriteString("Date: ")
		bw.Write(time.Now().UTC().AppendFormat(bw.AvailableBuffer(), http.TimeFormat))
		bw.WriteString("\r\n")
	}
	if w.chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
		for _, v := range h["Trailer"] {
			for name := range strings.SplitSeq(v, ",") {
				if name = strings.TrimSpace(name); name != "" {
					w.trailers = append(w.trailers, http.CanonicalHeaderKey(name))
				}
			}
		}
	}
	switch {
	case w.closeAfter:
		bw.WriteString("Connection: close\r\n")
	case !w.req.ProtoAtLeast(1, 1):
		bw.WriteString("Connection: keep-alive\r\n")
	}
	bw.WriteString("\r\n")
}

// writeHeaderLine writes "k: v"; line breaks in a value become spaces, as
// http.Header.Write does.
func writeHeaderLine(bw *bufio.Writer, k, v string) {
	if strings.ContainsAny(v, "\r\n") {
		v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
	}
	bw.WriteString(k)
	bw.WriteString(": ")
	bw.WriteString(strings.TrimSpace(v))
	bw.WriteString("\r\n")
}

func (w *rw1) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.bodyless || len(b) == 0 {
		return len(b), nil
	}
	if w.cl >= 0 && w.written+int64(len(b)) > w.cl {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(b))
	if w.chunked {
		w.bw.Write(strconv.AppendUint(w.bw.AvailableBuffer(), uint64(len(b)), 16))
		w.bw.WriteString("\r\n")
	}
	n, err := w.bw.Write(b)
	if err == nil && w.chunked {
		_, err = w.bw.WriteString("\r\n")
	}
	w.err = err
	return n, err
}

// FlushError sends what was written so far (http.ResponseController).
func (w *rw1) FlushError() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return w.err
	}
	w.err = w.bw.Flush()
	return w.err
}

func (w *rw1) Flush() { _ = w.FlushError() }

// finish ends the response; it reports whether the connection is still
// usable.
func (w *rw1) finish() bool {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.chunked {
		w.bw.WriteString("0\r\n")
		// Trailers: the names the header announced, set after it, and
		// http.TrailerPrefix ones.
		for _, k := range w.trailers {
			for _, v := range w.h[k] {
				writeHeaderLine(w.bw, k, v)
			}
		}
		for k, vs := range w.h {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
				for _, v := range vs {
					writeHeaderLine(w.bw, http.CanonicalHeaderKey(name), v)
				}
			}
		}
		w.bw.WriteString("\r\n")
	}
	if w.cl >= 0 && !w.bodyless && w.written != w.cl {
		w.closeAfter = true // the client waits for bytes that never come
	}
	if w.err == nil {
		w.err = w.bw.Flush()
	}
	return w.err == nil
}

// setReadDeadline sets client's read deadline unless ctx1 or ctx2 ended
// (then watch1's deadline in the past stays).
func setReadDeadline(ctx1, ctx2 context.Context, client net.Conn, t time.Time) {
	_ = client.SetReadDeadline(t)
	if ctx1.Err() != nil || ctx2.Err() != nil {
		_ = client.SetDeadline(time.Unix(1, 0))
	}
}

// watch1 ends a lean connection when ctx (ServeConn's) ends.
func watch1(ctx context.Context, client net.Conn, cs *connState) (stop func() bool) {
	return context.AfterFunc(ctx, func() { cut1(client, cs) })
}

// cut1 makes a lean connection's reads and writes fail, and so the
// exchange with the backend.
func cut1(client net.Conn, cs *connState) {
	past := time.Unix(1, 0)
	_ = client.SetDeadline(past)
	if up := cs.live.Load(); up != nil {
		_ = up.conn.SetDeadline(past)
	}
}

// track1 registers a lean connection for Close; false once closed.
func (p *Proxy) track1(client net.Conn, cs *connState) bool {
	p.leanMu.Lock()
	defer p.leanMu.Unlock()
	if p.ctx.Err() != nil {
		return false
	}
	p.lean[cs] = client
	return true
}

func (p *Proxy) untrack1(cs *connState) {
	p.leanMu.Lock()
	delete(p.lean, cs)
	p.leanMu.Unlock()
}
