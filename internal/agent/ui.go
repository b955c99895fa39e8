package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/offline/check"
	"github.com/bulwark-net/bulwark/internal/ui"
)

// uiListenAddr is where the service map listens: loopback, a free port.
const uiListenAddr = "127.0.0.1:0"

// uiServer is the agent's service-map server, started on the first
// `bulwark ui` and kept until the agent stops. The zero value is ready.
type uiServer struct {
	mu  sync.Mutex
	srv *ui.Server
}

func (u *uiServer) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.srv != nil {
		_ = u.srv.Close()
		u.srv = nil
	}
}

// StartUI implements agentapi.UIBackend.
func (a *Agent) StartUI(context.Context) (agentapi.UIResponse, error) {
	a.ui.mu.Lock()
	defer a.ui.mu.Unlock()
	if a.ui.srv != nil {
		return agentapi.UIResponse{URL: a.ui.srv.URL()}, nil
	}
	n := a.node
	if n.events == nil || n.events.obs == nil {
		return agentapi.UIResponse{}, errors.New("service map: the agent has no flow observer (see 'bulwark status' errors)")
	}
	h, err := ui.NewHandler(ui.Options{Instance: a.opts.Paths.Instance, Source: uiSource{a}, Ring: n.events.obs.Ring()})
	if err != nil {
		return agentapi.UIResponse{}, fmt.Errorf("service map: %w", err)
	}
	srv, err := ui.Listen(uiListenAddr, h)
	if err != nil {
		return agentapi.UIResponse{}, fmt.Errorf("service map: %w", err)
	}
	a.ui.srv = srv
	a.log.Info("service map serving", "url", srv.URL())
	return agentapi.UIResponse{URL: srv.URL()}, nil
}

// uiSource gives the page the agent's pods and explains verdicts with the
// policy in force: the snapshot last pushed into the datapath, decided by
// the same lookup and explained by the same text as `policy trace`.
type uiSource struct{ a *Agent }

func (s uiSource) Pods(ctx context.Context) ([]agentapi.Pod, error) { return s.a.Pods(ctx) }

func (s uiSource) Trace(_ context.Context, q ui.TraceQuery) (ui.Trace, error) {
	n := s.a.node
	n.mu.Lock()
	snap := n.snap
	n.mu.Unlock()
	if snap == nil {
		return ui.Trace{}, errors.New("trace: no policy has been loaded yet")
	}
	return ui.TraceState(&check.State{Snap: snap}, q)
}
