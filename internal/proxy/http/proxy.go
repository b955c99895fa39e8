package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/proxy"
)

// Bodies of the proxy's own answers.
const (
	deniedBody      = "Access denied"      // Cilium's 403 body
	rateLimitedBody = "local_rate_limited" // Envoy's 429 body
	unavailableBody = "upstream connect error"
)

// maxUpgradeBody bounds the body of an h2c Upgrade request, which must be
// read whole before the connection switches protocols.
const maxUpgradeBody = 1 << 20

// maxHeaderBytes bounds a request's header.
const maxHeaderBytes = 1 << 20

// Options configure a Proxy.
type Options struct {
	// Policies gives the rules of each flow; required.
	Policies proxy.PolicySource
	// Dialer opens upstream connections as the original source; required.
	Dialer proxy.Dialer
	// Record receives one Record per request and per response; may be nil.
	Record proxy.Recorder
	// RateLimits, when set, limits flows to rate-limited services.
	RateLimits RateLimitSource
	// Registerer, when set, receives the proxy's own metrics.
	Registerer prometheus.Registerer
	// RedactHeaders names the request headers whose values Records never
	// carry (case-insensitive); nil means DefaultRedactHeaders. Header
	// names containing "token", "secret", "password" or "key" are
	// redacted in every case.
	RedactHeaders []string
}

// DefaultRedactHeaders are redacted when Options.RedactHeaders is nil.
var DefaultRedactHeaders = []string{"Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie"}

// Redacted replaces the value of a redacted header in a Record (Hubble's
// marker).
const Redacted = "HUBBLE_REDACTED"

// Proxy enforces HTTP rules on the connections it is handed. It is safe
// for concurrent use; one Proxy serves every redirected connection.
type Proxy struct {
	opts   Options
	rules  *ruleCache
	redact map[string]bool
	srv    *http.Server
	h2     *http2.Server
	rp     *httputil.ReverseProxy
	ln     *chanListener
	m      proxyMetrics

	poolMu sync.Mutex
	pools  map[poolKey]*pool

	// ctx ends when the proxy closes.
	ctx    context.Context
	cancel context.CancelFunc
	// idle1 keeps HTTP/1.1 upstream connections between client
	// connections.
	idle1 *idlePool
	// lean holds the connections serve1 serves, for Close to cut.
	leanMu sync.Mutex
	lean   map[*connState]net.Conn

	closeOnce sync.Once
	serveDone chan struct{}
}

// New starts a Proxy. Close stops it.
func New(o Options) (*Proxy, error) {
	if o.Policies == nil {
		return nil, errors.New("http proxy: no policy source")
	}
	if o.Dialer == nil {
		return nil, errors.New("http proxy: no upstream dialer")
	}
	p := &Proxy{
		opts:      o,
		rules:     newRuleCache(),
		redact:    map[string]bool{},
		ln:        newChanListener(),
		pools:     map[poolKey]*pool{},
		lean:      map[*connState]net.Conn{},
		idle1:     newIdlePool(),
		serveDone: make(chan struct{}),
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	redact := o.RedactHeaders
	if redact == nil {
		redact = DefaultRedactHeaders
	}
	for _, h := range redact {
		p.redact[http.CanonicalHeaderKey(h)] = true
	}
	m, err := newProxyMetrics(o.Registerer)
	if err != nil {
		return nil, fmt.Errorf("http proxy: %w", err)
	}
	p.m = m
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	p.srv = &http.Server{
		Handler:           p,
		Protocols:         protos,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          log.New(io.Discard, "", 0),
		ConnState: func(c net.Conn, state http.ConnState) {
			if tc, ok := c.(*trackedConn); ok && (state == http.StateClosed || state == http.StateHijacked) {
				tc.state.closeUpstream1()
			}
		},
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if tc, ok := c.(*trackedConn); ok {
				return context.WithValue(ctx, connKey{}, tc.state)
			}
			return ctx
		},
	}
	p.h2 = &http2.Server{}
	p.rp = &httputil.ReverseProxy{
		Rewrite:        p.rewrite,
		Transport:      roundTripper{p},
		ModifyResponse: p.modifyResponse,
		ErrorHandler:   p.upstreamError,
		ErrorLog:       log.New(io.Discard, "", 0),
	}
	go func() {
		defer close(p.serveDone)
		_ = p.srv.Serve(p.ln)
	}()
	go func() {
		t := time.NewTicker(idleUpTimeout / 2)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				p.idle1.expire(false)
			case <-p.ctx.Done():
				return
			}
		}
	}()
	return p, nil
}

// Close stops the proxy: every connection it serves is closed.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.leanMu.Lock()
		p.cancel()
		for cs, c := range p.lean {
			cut1(c, cs)
		}
		p.leanMu.Unlock()
		p.ln.Close()
		_ = p.srv.Close()
		<-p.serveDone
		p.idle1.expire(true)
		p.poolMu.Lock()
		for k, pl := range p.pools {
			pl.closeIdle()
			delete(p.pools, k)
		}
		p.poolMu.Unlock()
	})
	return nil
}

// ServeConn serves one accepted client connection of flow f until it ends
// (or ctx ends, or the proxy closes); it always closes client. A flow
// without L7 rules is refused: the connection is closed unanswered.
func (p *Proxy) ServeConn(ctx context.Context, client net.Conn, f proxy.Flow) {
	if pol, ok := p.opts.Policies.PolicyFor(f); !ok || len(pol.Stages) == 0 {
		client.Close()
		p.record(proxy.Record{Time: time.Now(), Flow: f, Type: proxy.Request, Verdict: proxy.Dropped, Reason: "no L7 policy for this flow: connection refused"})
		return
	}
	p.m.conns.Inc()
	defer p.m.conns.Dec()
	cs := &connState{ctx: ctx, flow: f}
	defer cs.releasePool(p)
	if !p.track1(client, cs) {
		client.Close()
		return
	}
	var stop func() bool
	if ctx.Done() != nil {
		stop = watch1(ctx, client, cs)
	}
	handOff := p.serve1(ctx, client, cs)
	if stop != nil {
		stop()
	}
	p.untrack1(cs)
	if handOff == nil {
		// Released before the client sees the close: its next connection
		// finds the upstream connection idle.
		p.releaseUpstream1(cs)
		client.Close()
		return
	}
	if ctx.Err() != nil || p.ctx.Err() != nil {
		client.Close()
		cs.closeUpstream1()
		return
	}
	_ = client.SetDeadline(time.Time{})
	tc := &trackedConn{Conn: handOff, done: make(chan struct{}), state: cs}
	select {
	case p.ln.ch <- tc:
	case <-p.ln.closed:
		client.Close()
		cs.closeUpstream1()
		return
	case <-ctx.Done():
		client.Close()
		cs.closeUpstream1()
		return
	}
	select {
	case <-tc.done:
	case <-ctx.Done():
		tc.Close()
	}
}

// connState is what the handler knows of a client connection.
type connState struct {
	ctx  context.Context // ServeConn's: dials end with it
	flow proxy.Flow
	// pool is the flow's shared upstream pool, acquired on first use
	// (HTTP/2, gRPC, upgrades): plain HTTP/1.1 never needs it.
	poolMu   sync.Mutex
	pool     *pool
	upgraded atomic.Bool // switched to HTTP/2 by an h2c Upgrade
	// up is the HTTP/1.1 upstream connection (see forward1). Only the
	// server's goroutine of this (HTTP/1, never hijacked) connection uses
	// it: its requests, then the ConnState hook that closes it. (The lean
	// path, serve1, uses it first, then hands it over with the connection.)
	up  *upstream1
	dst string // flow.Dst as text, for the HTTP/1.1 path's requests
	// live is up, for watch1 (another goroutine) to cut it.
	live atomic.Pointer[upstream1]
}

type connKey struct{}
type reqKey struct{}

// reqState carries one allowed request from the handler to the reverse
// proxy's hooks.
type reqState struct {
	cs          *connState
	path, query string
	host        string
	h2Upstream  bool
	grpc        bool
	actions     []headerAction
	rec         proxy.Record // the request record (verdict Forwarded)
	forwardedAt time.Time
	upConn      atomic.Pointer[net.Conn] // forward1's upstream connection, for cancellation
}

func isGRPC(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

func isH2CUpgrade(h http.Header) bool {
	return httpguts.HeaderValuesContainsToken(h["Upgrade"], "h2c") &&
		httpguts.HeaderValuesContainsToken(h["Connection"], "HTTP2-Settings")
}

// ServeHTTP decides one request: every Stage of the flow's Policy must
// allow it, then the rate limit must; then it is forwarded to the flow's
// original destination.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	cs, _ := r.Context().Value(connKey{}).(*connState)
	if cs == nil {
		http.Error(w, "no flow", http.StatusInternalServerError)
		return
	}
	if r.ProtoMajor == 1 && !cs.upgraded.Load() && isH2CUpgrade(r.Header) {
		p.serveH2CUpgrade(w, r, cs)
		return
	}
	p.serveRequest(w, r, cs)
}

// serveRequest decides and forwards one request of connection cs (the
// h2c Upgrade handshake is ServeHTTP's).
func (p *Proxy) serveRequest(w http.ResponseWriter, r *http.Request, cs *connState) {
	grpc := isGRPC(r)
	rec := proxy.Record{Time: time.Now(), Flow: cs.flow, Type: proxy.Request}
	rec.HTTP = &proxy.HTTP{Method: r.Method, Protocol: r.Proto, Headers: p.recordHeaders(r.Header)}
	if r.ProtoMajor == 2 {
		rec.HTTP.Protocol = "HTTP/2"
	}

	if r.Method == http.MethodConnect {
		rec.HTTP.URL = "http://" + r.Host
		p.deny(w, r, rec, proxy.Dropped, http.StatusForbidden, "CONNECT is not proxied", grpc)
		return
	}
	path, query, err := normalizeTarget(r.RequestURI)
	if err != nil {
		rec.HTTP.URL = "http://" + r.Host + r.RequestURI
		p.deny(w, r, rec, proxy.Error, http.StatusBadRequest, "malformed request target", grpc)
		return
	}
	target := path
	if query != "" {
		target += "?" + query
	}
	rec.HTTP.URL = "http://" + r.Host + target
	// The backend must read the same authority the rules matched: a Host
	// header left beside :authority (HTTP/2) that differs is refused.
	if hv, ok := r.Header["Host"]; ok && (len(hv) != 1 || hv[0] != r.Host) {
		p.deny(w, r, rec, proxy.Error, http.StatusBadRequest, "conflicting Host and :authority", grpc)
		return
	}
	if r.Host == "" || !httpguts.ValidHostHeader(r.Host) {
		p.deny(w, r, rec, proxy.Error, http.StatusBadRequest, "missing or invalid Host", grpc)
		return
	}

	pol, ok := p.opts.Policies.PolicyFor(cs.flow)
	if !ok || len(pol.Stages) == 0 {
		w.Header().Set("Connection", "close")
		p.deny(w, r, rec, proxy.Dropped, http.StatusForbidden, "no L7 policy for this flow any more", grpc)
		return
	}
	q := &request{method: r.Method, target: target, host: r.Host, header: r.Header}
	var actions []headerAction
	var policies []string
	for _, st := range pol.Stages {
		allowed, acts := p.rules.get(st.Rules).evaluate(q)
		rec.Direction, rec.EndpointID = st.Direction, st.EndpointID
		if !allowed {
			rec.Policies = st.Policies
			p.deny(w, r, rec, proxy.Dropped, http.StatusForbidden, "no HTTP rule of the "+st.Direction.String()+" policy matched", grpc)
			return
		}
		actions = append(actions, acts...)
		if len(pol.Stages) == 1 {
			continue
		}
		for _, name := range st.Policies {
			if !slices.Contains(policies, name) {
				policies = append(policies, name)
			}
		}
	}
	if len(pol.Stages) == 1 {
		// One stage: its (immutable) list as it is, once without repeats.
		policies = uniqueNames(pol.Stages[0].Policies)
	}
	rec.Policies = policies
	if p.opts.RateLimits != nil {
		if b := p.opts.RateLimits.RateLimitFor(cs.flow); b != nil && !b.Allow() {
			p.m.rateLimited.Inc()
			w.Header().Set("X-Envoy-Ratelimited", "true")
			p.deny(w, r, rec, proxy.RateLimited, http.StatusTooManyRequests, "rate limited", grpc)
			return
		}
	}
	rec.Verdict = proxy.Forwarded
	st := &reqState{
		cs: cs, path: path, query: query, host: r.Host, grpc: grpc, actions: actions, rec: rec,
		// Prior-knowledge HTTP/2 clients expect an HTTP/2 backend; gRPC
		// needs one. An h2c-upgraded client may talk to an HTTP/1 backend.
		h2Upstream: grpc || (r.ProtoMajor == 2 && !cs.upgraded.Load()),
	}
	if r.ProtoMajor == 1 && !cs.upgraded.Load() && !st.h2Upstream && !isUpgrade(r) {
		p.forward1(w, r, st)
		return
	}
	p.rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), reqKey{}, st)))
}

// uniqueNames is names without repeats (names itself when it has none).
func uniqueNames(names []string) []string {
	for i := 1; i < len(names); i++ {
		if slices.Contains(names[:i], names[i]) {
			var out []string
			for _, n := range names {
				if !slices.Contains(out, n) {
					out = append(out, n)
				}
			}
			return out
		}
	}
	return names
}

// deny answers a request the proxy does not forward and records it. gRPC
// calls get a trailers-only response (HTTP 200, grpc-status
// PERMISSION_DENIED, or UNAVAILABLE for a rate limit or malformed call).
func (p *Proxy) deny(w http.ResponseWriter, r *http.Request, rec proxy.Record, v proxy.Verdict, code int, reason string, grpc bool) {
	rec.Verdict, rec.Reason = v, reason
	p.record(rec)
	body := deniedBody
	switch code {
	case http.StatusTooManyRequests:
		body = rateLimitedBody
	case http.StatusBadRequest:
		body = "Bad Request"
	}
	h := w.Header()
	if grpc {
		status := "7" // PERMISSION_DENIED
		if code != http.StatusForbidden {
			status = "14" // UNAVAILABLE, as gRPC maps HTTP 429 and 400
		}
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", status)
		h.Set("Grpc-Message", body)
		w.WriteHeader(http.StatusOK)
	} else {
		h.Set("Content-Type", "text/plain")
		h.Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
	}
	resp := rec
	resp.Type = proxy.Response
	resp.Time = time.Now()
	resp.Latency = resp.Time.Sub(rec.Time)
	h2 := *rec.HTTP
	h2.Code = code
	if grpc {
		h2.Code = http.StatusOK
	}
	resp.HTTP = &h2
	p.record(resp)
}

// rewrite builds the upstream request: always to the flow's original
// destination, with the normalised path and the authority the rules saw.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	st := pr.In.Context().Value(reqKey{}).(*reqState)
	pr.Out.URL = &url.URL{Scheme: "http", Host: st.cs.flow.Dst.String(), Opaque: st.path, RawQuery: st.query}
	pr.Out.Host = st.host
	pr.Out.Header.Del("Host")
	// Transparent: the client's forwarding headers pass unchanged (the
	// reverse proxy removed them before Rewrite) and none are added.
	for _, k := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		if v, ok := pr.In.Header[k]; ok {
			pr.Out.Header[k] = v
		}
	}
	if mism := applyActions(st.actions, pr.Out.Header); len(mism) > 0 {
		st.rec.Reason = "header mismatch: " + strings.Join(mism, ", ")
	}
	p.record(st.rec)
	st.forwardedAt = time.Now()
}

func (p *Proxy) modifyResponse(resp *http.Response) error {
	if st, ok := resp.Request.Context().Value(reqKey{}).(*reqState); ok {
		p.recordResponse(st, resp)
	}
	return nil
}

func (p *Proxy) recordResponse(st *reqState, resp *http.Response) {
	now := time.Now()
	rec := st.rec
	rec.Type, rec.Time, rec.Latency, rec.Reason = proxy.Response, now, now.Sub(st.forwardedAt), ""
	h := *st.rec.HTTP
	h.Code = resp.StatusCode
	h.Headers = nil
	rec.HTTP = &h
	p.record(rec)
}

func (p *Proxy) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	st, ok := r.Context().Value(reqKey{}).(*reqState)
	if !ok {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	p.answerUpstreamError(w, r, st, err)
}

// answerUpstreamError answers 503 (gRPC: UNAVAILABLE) for a request the
// upstream did not answer, and records it.
func (p *Proxy) answerUpstreamError(w http.ResponseWriter, r *http.Request, st *reqState, err error) {
	rec := st.rec
	rec.Type, rec.Time, rec.Verdict = proxy.Response, time.Now(), proxy.Error
	if !st.forwardedAt.IsZero() {
		rec.Latency = rec.Time.Sub(st.forwardedAt)
	}
	rec.Reason = "upstream: " + err.Error()
	h := *st.rec.HTTP
	h.Code = http.StatusServiceUnavailable
	h.Headers = nil
	rec.HTTP = &h
	p.record(rec)
	if r.Context().Err() != nil {
		// The client is gone (or half-closed): abort, never answer.
		panic(http.ErrAbortHandler)
	}
	if st.grpc {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "14")
		w.Header().Set("Grpc-Message", unavailableBody)
		w.WriteHeader(http.StatusOK)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = io.WriteString(w, unavailableBody)
}

func (p *Proxy) record(r proxy.Record) {
	if p.opts.Record != nil {
		p.opts.Record(r)
	}
}

// recordHeaders is the request's headers as a Record carries them: sorted,
// redacted.
func (p *Proxy) recordHeaders(h http.Header) []proxy.Header {
	out := make([]proxy.Header, 0, len(h))
	for k, vs := range h {
		redact := p.redact[k] || sensitiveName(k)
		for _, v := range vs {
			if redact {
				v = Redacted
			}
			out = append(out, proxy.Header{Key: k, Value: v})
		}
	}
	slices.SortStableFunc(out, func(a, b proxy.Header) int { return strings.Compare(a.Key, b.Key) })
	return out
}

func sensitiveName(k string) bool {
	for _, s := range []string{"token", "secret", "password", "key"} {
		if containsFold(k, s) {
			return true
		}
	}
	return false
}

// containsFold reports whether s contains lower (ASCII lower case),
// ignoring ASCII case, without allocating.
func containsFold(s, lower string) bool {
	for i := 0; i+len(lower) <= len(s); i++ {
		j := 0
		for ; j < len(lower); j++ {
			c := s[i+j]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != lower[j] {
				break
			}
		}
		if j == len(lower) {
			return true
		}
	}
	return false
}

// serveH2CUpgrade switches an HTTP/1.1 connection to HTTP/2 (RFC 7540
// section 3.2); the upgrade request itself is then decided as stream 1.
func (p *Proxy) serveH2CUpgrade(w http.ResponseWriter, r *http.Request, cs *connState) {
	settings, err := h2Settings(r.Header)
	if err != nil {
		http.Error(w, "Bad Request", http.StatusBadRequest)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxUpgradeBody+1))
	if err != nil {
		return
	}
	if len(body) > maxUpgradeBody {
		http.Error(w, "Request Entity Too Large", http.StatusRequestEntityTooLarge)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	// Stream 1 answers the upgrade request itself: it is forwarded as a
	// plain request, never as an upgrade again.
	for _, k := range []string{"Upgrade", "Connection", "Http2-Settings"} {
		r.Header.Del(k)
	}
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	if _, err := rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"); err != nil {
		return
	}
	if err := rw.Flush(); err != nil {
		return
	}
	cs.upgraded.Store(true)
	p.h2.ServeConn(&bufConn{Conn: conn, r: rw.Reader}, &http2.ServeConnOpts{
		Context: r.Context(), BaseConfig: p.srv, Handler: p, UpgradeRequest: r, Settings: settings,
	})
}

func h2Settings(h http.Header) ([]byte, error) {
	vs := h["Http2-Settings"]
	if len(vs) != 1 {
		return nil, errors.New("want exactly one HTTP2-Settings header")
	}
	return decodeBase64URL(vs[0])
}

// bufConn reads what the HTTP/1 server had buffered before the upgrade.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// trackedConn is a client connection handed to the server; done closes
// when it is closed (by the server, a hijacker or ServeConn).
type trackedConn struct {
	net.Conn
	state *connState
	once  sync.Once
	done  chan struct{}
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.done) })
	return err
}

// chanListener feeds ServeConn's connections to the one http.Server.
type chanListener struct {
	ch        chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// Upstream connection pools: one per (original source address, source
// identity, original destination), shared by that source's connections
// and closed when the last of them ends.
type poolKey struct {
	src   netip.Addr
	srcID identity.NumericIdentity
	dst   netip.AddrPort
}

type pool struct {
	key    poolKey
	refs   int
	h1, h2 *http.Transport
}

func (pl *pool) closeIdle() {
	pl.h1.CloseIdleConnections()
	pl.h2.CloseIdleConnections()
}

func (p *Proxy) acquirePool(f proxy.Flow) *pool {
	k := poolKey{src: f.Src.Addr(), srcID: f.SrcIdentity, dst: f.Dst}
	p.poolMu.Lock()
	defer p.poolMu.Unlock()
	if pl, ok := p.pools[k]; ok {
		pl.refs++
		return pl
	}
	dialFlow := f
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		return p.opts.Dialer.DialUpstream(ctx, dialFlow)
	}
	h1p, h2p := new(http.Protocols), new(http.Protocols)
	h1p.SetHTTP1(true)
	h2p.SetUnencryptedHTTP2(true)
	newTransport := func(protos *http.Protocols) *http.Transport {
		return &http.Transport{
			DialContext:         dial,
			Protocols:           protos,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		}
	}
	pl := &pool{key: k, refs: 1, h1: newTransport(h1p), h2: newTransport(h2p)}
	p.pools[k] = pl
	return pl
}

func (p *Proxy) releasePool(pl *pool) {
	p.poolMu.Lock()
	defer p.poolMu.Unlock()
	pl.refs--
	if pl.refs == 0 && p.pools[pl.key] == pl {
		delete(p.pools, pl.key)
		pl.closeIdle()
	}
}

// upstreamPool is cs's pool, acquired on first use.
func (cs *connState) upstreamPool(p *Proxy) *pool {
	cs.poolMu.Lock()
	defer cs.poolMu.Unlock()
	if cs.pool == nil {
		cs.pool = p.acquirePool(cs.flow)
	}
	return cs.pool
}

// releasePool gives cs's pool back when the connection ends (a handler
// that still runs keeps using it; it is closed when idle).
func (cs *connState) releasePool(p *Proxy) {
	cs.poolMu.Lock()
	defer cs.poolMu.Unlock()
	if cs.pool != nil {
		p.releasePool(cs.pool)
	}
}

// roundTripper sends a request through its flow's pool.
type roundTripper struct{ p *Proxy }

func (rt roundTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	st, ok := r.Context().Value(reqKey{}).(*reqState)
	if !ok {
		return nil, errors.New("request without flow")
	}
	if st.h2Upstream {
		return st.cs.upstreamPool(rt.p).h2.RoundTrip(r)
	}
	return st.cs.upstreamPool(rt.p).h1.RoundTrip(r)
}
