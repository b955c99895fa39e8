package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// DefaultHealthListen is where the agent of a Kubernetes node answers the
// kubelet's probes (Cilium's health port). Off unless --health-addr is
// given: the sandbox has no kubelet.
const DefaultHealthListen = "127.0.0.1:9879"

// The readiness conditions. The agent is ready when every one is met.
const (
	// ReadyDatapath: the BPF programs and maps are loaded (or adopted
	// from the pins of the previous agent).
	ReadyDatapath = "datapath"
	// ReadySource: the desired state has been read from its source and
	// pushed once: the sandbox's persisted objects reconciled, or in
	// Kubernetes mode the informers' caches synced and their first sync
	// applied. Before that the agent would enforce a partial picture.
	ReadySource = "source"
)

// Health is the agent's liveness and readiness, served over HTTP for the
// kubelet's probes:
//
//   - GET /healthz (liveness): 200 while the agent runs; 503 once it
//     is stopping. It checks nothing that a restart would not fix worse:
//     a slow resync must not get the agent killed.
//   - GET /readyz (readiness): 200 once every condition is met, 503
//     naming the unmet ones with their reasons otherwise.
//
// Both answer a small JSON document ({"status":..., "pending":{...}}).
// Invariant: a condition, once met, can be unmet again (Set with an
// error), and stopping makes both endpoints fail.
type Health struct {
	mu       sync.Mutex
	pending  map[string]string // condition -> why it is not met
	stopping bool
}

// NewHealth starts with every condition of conds unmet.
func NewHealth(conds ...string) *Health {
	h := &Health{pending: map[string]string{}}
	for _, c := range conds {
		h.pending[c] = "not yet"
	}
	return h
}

// Set marks cond met (err nil) or unmet with err as the reason.
func (h *Health) Set(cond string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err == nil {
		delete(h.pending, cond)
		return
	}
	h.pending[cond] = err.Error()
}

// Stopping makes liveness and readiness fail from now on.
func (h *Health) Stopping() {
	h.mu.Lock()
	h.stopping = true
	h.mu.Unlock()
}

// HealthStatus is the JSON body of /healthz and /readyz.
type HealthStatus struct {
	// Status is "ok", "not ready" or "stopping".
	Status string `json:"status"`
	// Pending are the unmet readiness conditions and why (/readyz).
	Pending map[string]string `json:"pending,omitempty"`
}

// Ready reports whether every condition is met, and the unmet ones.
func (h *Health) Ready() (bool, map[string]string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopping {
		return false, map[string]string{"agent": "stopping"}
	}
	if len(h.pending) == 0 {
		return true, nil
	}
	out := make(map[string]string, len(h.pending))
	for k, v := range h.pending {
		out[k] = v
	}
	return false, out
}

// ServeHTTP answers /healthz and /readyz; any other path is 404.
func (h *Health) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	var st HealthStatus
	code := http.StatusOK
	switch r.URL.Path {
	case "/healthz":
		h.mu.Lock()
		stopping := h.stopping
		h.mu.Unlock()
		st.Status = "ok"
		if stopping {
			st.Status, code = "stopping", http.StatusServiceUnavailable
		}
	case "/readyz":
		ok, pending := h.Ready()
		st.Status, st.Pending = "ok", pending
		if !ok {
			st.Status, code = "not ready", http.StatusServiceUnavailable
			if _, s := pending["agent"]; s && len(pending) == 1 {
				st.Status = "stopping"
			}
		}
	default:
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(st)
}

// Serve serves h on ln until ctx ends (then it closes ln) or serving
// fails.
func (h *Health) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	stop := context.AfterFunc(ctx, func() {
		shut, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
	})
	defer stop()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("health endpoint on %s: %w", ln.Addr(), err)
	}
	return nil
}

// startHealth binds addr ("" = no endpoint) and serves h there until the
// returned stop is called. An address that cannot be bound stops the agent
// before it touches anything, naming the flag.
func startHealth(h *Health, addr string) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	ln, err := listenTCP(addr, "--health-addr", "health endpoint")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.Serve(ctx, ln)
	}()
	return func() { cancel(); <-done }, nil
}
