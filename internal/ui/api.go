package ui

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bulwark-net/bulwark/internal/agentapi"
)

type handler struct {
	opts      Options
	workloads *workloadCache
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, agentapi.ErrorBody{Error: err.Error()})
}

func (h *handler) info(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"instance": h.opts.Instance, "ringCapacity": h.opts.Ring.Capacity()})
}

func (h *handler) pods(w http.ResponseWriter, r *http.Request) {
	pods, err := h.opts.Source.Pods(r.Context())
	if err != nil {
		writeError(w, http.StatusInternalServerError, fmt.Errorf("list pods: %w", err))
		return
	}
	if pods == nil {
		pods = []agentapi.Pod{}
	}
	writeJSON(w, http.StatusOK, pods)
}

// flows answers the flows the ring holds, oldest first.
func (h *handler) flows(w http.ResponseWriter, r *http.Request) {
	wl := h.workloads.get(r.Context())
	held := h.opts.Ring.Snapshot()
	out := make([]Flow, 0, len(held))
	for _, f := range held {
		out = append(out, convert(f, wl))
	}
	writeJSON(w, http.StatusOK, out)
}

// events streams flows as server-sent events: a "reset", the backlog the
// ring holds, then every new flow; "lost" tells how many flows this stream
// missed because the page read too slowly.
func (h *handler) events(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, errors.New("streaming is not supported by this connection"))
		return
	}
	follower, backlog := h.opts.Ring.Follow(h.opts.FollowBuffer)
	defer follower.Close()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	ctx := r.Context()
	send := func(event string, v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
		return err
	}
	if err := send("reset", struct{}{}); err != nil {
		return
	}
	wl := h.workloads.get(ctx)
	for _, f := range backlog {
		if send("flow", convert(f, wl)) != nil {
			return
		}
	}
	fl.Flush()
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-keepalive.C:
			if _, err := fmt.Fprint(w, ": keepalive\n\n"); err != nil {
				return
			}
			fl.Flush()
		case f := <-follower.C():
			if n := follower.TakeLost(); n > 0 {
				if send("lost", map[string]uint64{"count": n}) != nil {
					return
				}
			}
			wl = h.workloads.get(ctx)
			if send("flow", convert(f, wl)) != nil {
				return
			}
			// Drain what is queued before flushing: one write per burst.
			for drained := false; !drained; {
				select {
				case f := <-follower.C():
					if send("flow", convert(f, wl)) != nil {
						return
					}
				default:
					drained = true
				}
			}
			fl.Flush()
		}
	}
}

func (h *handler) trace(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	tq := TraceQuery{Src: q.Get("src"), Dst: q.Get("dst"), Protocol: q.Get("proto")}
	if tq.Src == "" || tq.Dst == "" {
		writeError(w, http.StatusBadRequest, errors.New("trace: src and dst are required (NS/POD or an IP address)"))
		return
	}
	port, err := strconv.Atoi(q.Get("port"))
	if err != nil || port < 1 || port > 65535 {
		writeError(w, http.StatusBadRequest, fmt.Errorf("trace: port %q: must be 1-65535", q.Get("port")))
		return
	}
	tq.Port = port
	res, err := h.opts.Source.Trace(r.Context(), tq)
	if err != nil {
		code := http.StatusInternalServerError
		var bq *BadQueryError
		if errors.As(err, &bq) {
			code = http.StatusBadRequest
		}
		writeError(w, code, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// workloadCache maps "ns/pod" to the pod's workload name, refreshed from
// the source at most once per ttl.
type workloadCache struct {
	src Source
	ttl time.Duration

	mu      sync.Mutex
	fetched time.Time
	names   map[string]string
}

func newWorkloadCache(src Source, ttl time.Duration) *workloadCache {
	return &workloadCache{src: src, ttl: ttl}
}

// get returns the current map; it is never mutated once returned.
func (c *workloadCache) get(ctx context.Context) map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.names != nil && time.Since(c.fetched) < c.ttl {
		return c.names
	}
	pods, err := c.src.Pods(ctx)
	if err != nil && c.names != nil {
		return c.names // keep the last good answer
	}
	names := make(map[string]string, len(pods))
	for _, p := range pods {
		names[p.Namespace+"/"+p.Name] = WorkloadName(p)
	}
	c.names, c.fetched = names, time.Now()
	return names
}

// WorkloadName is the name a pod is grouped under: its owner's name
// ("Deployment/backend" → "backend"), else the pod's own.
func WorkloadName(p agentapi.Pod) string {
	if _, name, ok := strings.Cut(p.Owner, "/"); ok && name != "" {
		return name
	}
	return p.Name
}
