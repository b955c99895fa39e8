// Package ui serves Bulwark's service map: the page built from ui/ (vite,
// cytoscape) and embedded here from dist/, and the small JSON and
// server-sent-events API it reads. The agent runs it on loopback
// (`bulwark ui`); the page needs nothing but this handler.
//
// Invariants:
//   - Read-only: nothing here changes the agent's state.
//   - Loopback only: Listen refuses a non-loopback address, and every
//     request must name a loopback host (no DNS rebinding from a web page).
//   - The flow stream never slows the event path: it follows the observer's
//     ring, whose Push never waits; a slow page loses flows and is told.
package ui

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/observer"
)

// dist holds the built page (scripts/build-ui.sh writes it).
//
//go:embed all:dist
var dist embed.FS

// Source is what the agent provides to the page. Methods are called
// concurrently.
type Source interface {
	// Pods are the pods of the instance, with their owner (workload).
	Pods(ctx context.Context) ([]agentapi.Pod, error)
	// Trace explains how the policy in force decides one connection.
	Trace(ctx context.Context, q TraceQuery) (Trace, error)
}

// TraceQuery names one connection: each side "NS/POD" or an IP address.
type TraceQuery struct {
	Src      string `json:"src"`
	Dst      string `json:"dst"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol"`
}

// Trace is the verdict of a TraceQuery and its `policy trace` text.
type Trace struct {
	Verdict  string   `json:"verdict"` // allowed | denied
	Egress   string   `json:"egress"`
	Ingress  string   `json:"ingress"`
	Policies []string `json:"policies"` // "namespace/name" of the deciding policies
	Text     string   `json:"text"`
}

// BadQueryError marks a Trace error caused by the query (400, not 500).
type BadQueryError struct{ Err error }

func (e *BadQueryError) Error() string { return e.Err.Error() }
func (e *BadQueryError) Unwrap() error { return e.Err }

// Options configure a Handler.
type Options struct {
	// Instance is shown in the page's title bar.
	Instance string
	Source   Source
	// Ring is the observer's flow ring the page follows.
	Ring *observer.Ring
	// FollowBuffer is how many flows a page may lag behind before it loses
	// some; 0 means observer.DefaultFollowBuffer.
	FollowBuffer int
	// PodCacheTTL bounds how stale the pod → workload names on flows may
	// be; 0 means two seconds.
	PodCacheTTL time.Duration
}

// NewHandler returns the page and its API.
func NewHandler(opts Options) (http.Handler, error) {
	if opts.Source == nil || opts.Ring == nil {
		return nil, errors.New("ui: a source and a flow ring are required")
	}
	if opts.FollowBuffer < 0 {
		return nil, fmt.Errorf("ui: follow buffer %d: must not be negative", opts.FollowBuffer)
	}
	if opts.FollowBuffer == 0 {
		opts.FollowBuffer = observer.DefaultFollowBuffer
	}
	if opts.PodCacheTTL <= 0 {
		opts.PodCacheTTL = 2 * time.Second
	}
	static, err := fs.Sub(dist, "dist")
	if err != nil {
		return nil, fmt.Errorf("ui: embedded page: %w", err)
	}
	if _, err := fs.Stat(static, "index.html"); err != nil {
		return nil, fmt.Errorf("ui: embedded page has no index.html (run scripts/build-ui.sh): %w", err)
	}
	h := &handler{opts: opts, workloads: newWorkloadCache(opts.Source, opts.PodCacheTTL)}
	mux := http.NewServeMux()
	mux.Handle("GET /", noStore(http.FileServerFS(static)))
	mux.HandleFunc("GET /api/info", h.info)
	mux.HandleFunc("GET /api/pods", h.pods)
	mux.HandleFunc("GET /api/flows", h.flows)
	mux.HandleFunc("GET /api/events", h.events)
	mux.HandleFunc("GET /api/trace", h.trace)
	return loopbackOnly(mux), nil
}

// noStore keeps browsers from mixing an older page with a newer agent.
func noStore(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// loopbackOnly refuses requests whose Host is not a loopback name or
// address: a page on another site that rebinds its name to 127.0.0.1
// cannot read flows.
func loopbackOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.Trim(host, "[]")
		ok := host == "localhost"
		if a, err := netip.ParseAddr(host); err == nil && a.IsLoopback() {
			ok = true
		}
		if !ok {
			http.Error(w, "the service map answers only on loopback addresses", http.StatusMisdirectedRequest)
			return
		}
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Frame-Options", "DENY")
		next.ServeHTTP(w, r)
	})
}

// Server is a running service-map server.
type Server struct {
	ln  net.Listener
	srv *http.Server
}

// Listen binds a loopback address ("127.0.0.1:0" picks a free port) and
// serves h in the background.
func Listen(addr string, h http.Handler) (*Server, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("ui: listen address %q: %w", addr, err)
	}
	if a, err := netip.ParseAddr(host); err != nil || !a.IsLoopback() {
		return nil, fmt.Errorf("ui: listen address %q: must be a loopback IP address", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ui: listen on %s: %w", addr, err)
	}
	s := &Server{ln: ln, srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// URL is the page's address.
func (s *Server) URL() string { return "http://" + s.ln.Addr().String() + "/" }

// Close stops the server; open event streams end.
func (s *Server) Close() error { return s.srv.Close() }
