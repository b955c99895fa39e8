package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"time"
)

// Backend is what the agent provides to the API. Every method is safe for
// concurrent use.
type Backend interface {
	Status(ctx context.Context) (Status, error)
	Apply(ctx context.Context, req ApplyRequest) (ApplyResponse, error)
	Delete(ctx context.Context, req ApplyRequest) (ApplyResponse, error)
	Pods(ctx context.Context) ([]Pod, error)
	Services(ctx context.Context) ([]Service, error)
	Policies(ctx context.Context) ([]Policy, error)
	Endpoints(ctx context.Context) ([]Endpoint, error)
	Identities(ctx context.Context) ([]Identity, error)
	// BPFPolicy returns the datapath entries of one endpoint (id != 0) or of
	// every endpoint (id == 0).
	BPFPolicy(ctx context.Context, id uint32) ([]EndpointPolicy, error)
	// Trace explains one connection against the live state.
	Trace(ctx context.Context, req TraceRequest) (TraceResponse, error)
	Shutdown(ctx context.Context, req ShutdownRequest) error
}

// UserError marks an error caused by the request (bad documents): the API
// answers 400 instead of 500.
type UserError struct{ Err error }

func (e *UserError) Error() string { return e.Err.Error() }
func (e *UserError) Unwrap() error { return e.Err }

// NotFoundError marks a lookup of something that does not exist (404).
type NotFoundError struct{ What string }

func (e *NotFoundError) Error() string { return e.What + " not found" }

// Server serves a Backend on a unix socket.
type Server struct {
	path string
	ln   net.Listener
	srv  *http.Server
}

// Listen creates the socket at path (its directory 0700, the socket 0600,
// a stale socket replaced) and returns a server ready to Serve.
func Listen(path string, b Backend) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if err := os.Chmod(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("restrict socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("an agent is already listening on %s", path)
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restrict socket: %w", err)
	}
	return &Server{path: path, ln: ln, srv: &http.Server{Handler: newMux(b), ReadHeaderTimeout: 10 * time.Second}}, nil
}

// Serve answers requests until Close; it returns nil after Close.
func (s *Server) Serve() error {
	err := s.srv.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close stops the server, waiting up to ctx for requests in flight, and
// removes the socket.
func (s *Server) Close(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	_ = os.Remove(s.path)
	return err
}

// requestContext is the request's context, ending also at the client's
// deadline (DeadlineHeader): a backend that checks it before committing
// never applies a change its client has stopped waiting for, even when the
// agent was stopped while the request sat in the socket.
func requestContext(r *http.Request) (context.Context, context.CancelFunc) {
	if h := r.Header.Get(DeadlineHeader); h != "" {
		if d, err := time.Parse(time.RFC3339Nano, h); err == nil {
			return context.WithDeadline(r.Context(), d)
		}
	}
	return context.WithCancel(r.Context())
}

// Expired reports whether a request's client has given up: its context
// ended, or its deadline has passed (even before the context's timer has
// fired). A backend checks it at its commit point.
func Expired(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

func newMux(b Backend) *http.ServeMux {
	mux := http.NewServeMux()
	get := func(path string, f func(ctx context.Context, r *http.Request) (any, error)) {
		mux.HandleFunc("GET "+path, func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := requestContext(r)
			defer cancel()
			v, err := f(ctx, r)
			reply(w, v, err)
		})
	}
	post := func(path string, body func() any, f func(ctx context.Context, body any) (any, error)) {
		mux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := requestContext(r)
			defer cancel()
			// A large change's memory goes back to the system once
			// answered, so a refused, applied or deleted large input
			// does not leave the agent's RSS at its peak.
			if r.ContentLength < 0 || r.ContentLength > 256<<10 {
				defer debug.FreeOSMemory()
			}
			req := body()
			dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxRequestBytes))
			if err := dec.Decode(req); err != nil {
				var tooLarge *http.MaxBytesError
				if errors.As(err, &tooLarge) {
					err = fmt.Errorf("request larger than %d MiB: split the input into several applies", MaxRequestBytes>>20)
				}
				reply(w, nil, &UserError{fmt.Errorf("decode request: %w", err)})
				return
			}
			v, err := f(ctx, req)
			reply(w, v, err)
		})
	}
	get("/v1/status", func(ctx context.Context, _ *http.Request) (any, error) { return b.Status(ctx) })
	get("/v1/pods", func(ctx context.Context, _ *http.Request) (any, error) { return b.Pods(ctx) })
	get("/v1/services", func(ctx context.Context, _ *http.Request) (any, error) { return b.Services(ctx) })
	get("/v1/policies", func(ctx context.Context, _ *http.Request) (any, error) { return b.Policies(ctx) })
	get("/v1/endpoints", func(ctx context.Context, _ *http.Request) (any, error) { return b.Endpoints(ctx) })
	get("/v1/identities", func(ctx context.Context, _ *http.Request) (any, error) { return b.Identities(ctx) })
	get("/v1/bpf/policy", func(ctx context.Context, _ *http.Request) (any, error) { return b.BPFPolicy(ctx, 0) })
	get("/v1/bpf/policy/{id}", func(ctx context.Context, r *http.Request) (any, error) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 32)
		if err != nil || id == 0 {
			return nil, &UserError{fmt.Errorf("endpoint id %q: not a positive number", r.PathValue("id"))}
		}
		return b.BPFPolicy(ctx, uint32(id))
	})
	post("/v1/apply", func() any { return &ApplyRequest{} }, func(ctx context.Context, v any) (any, error) {
		return b.Apply(ctx, *v.(*ApplyRequest))
	})
	post("/v1/delete", func() any { return &ApplyRequest{} }, func(ctx context.Context, v any) (any, error) {
		return b.Delete(ctx, *v.(*ApplyRequest))
	})
	post("/v1/policy/trace", func() any { return &TraceRequest{} }, func(ctx context.Context, v any) (any, error) {
		return b.Trace(ctx, *v.(*TraceRequest))
	})
	if wb, ok := b.(WorldBackend); ok {
		post("/v1/world", func() any { return &WorldRequest{} }, func(ctx context.Context, v any) (any, error) {
			return wb.World(ctx, *v.(*WorldRequest))
		})
	}
	post("/v1/shutdown", func() any { return &ShutdownRequest{} }, func(ctx context.Context, v any) (any, error) {
		return struct{}{}, b.Shutdown(ctx, *v.(*ShutdownRequest))
	})
	cniRoutes(b, post, get)
	if u, ok := b.(UIBackend); ok {
		post("/v1/ui", func() any { return &struct{}{} }, func(ctx context.Context, _ any) (any, error) { return u.StartUI(ctx) })
	}
	return mux
}

func reply(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		code := http.StatusInternalServerError
		var ue *UserError
		var nf *NotFoundError
		switch {
		case errors.As(err, &ue):
			code = http.StatusBadRequest
		case errors.As(err, &nf):
			code = http.StatusNotFound
		}
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(ErrorBody{Error: err.Error()})
		return
	}
	_ = json.NewEncoder(w).Encode(v)
}
