package agent

import (
	"context"
	"fmt"
	"slices"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/sandbox"
)

var _ agentapi.WorldBackend = (*Agent)(nil)

// World implements agentapi.WorldBackend: it adds and removes names of the
// running instance's simulated world (the world namespace is rebuilt,
// the cluster DNS answers the new names at once) and persists the set as
// 'up --world' does.
func (a *Agent) World(_ context.Context, req agentapi.WorldRequest) (agentapi.WorldResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.node == nil || a.node.sb == nil {
		return agentapi.WorldResponse{}, errNotReady
	}
	if len(req.Add)+len(req.Remove) > 0 {
		cfg, err := readSandboxConfig(a.opts.Paths)
		if err != nil {
			return agentapi.WorldResponse{}, err
		}
		add, err := sandbox.CleanWorldNames(req.Add, "")
		if err != nil {
			return agentapi.WorldResponse{}, &agentapi.UserError{Err: err}
		}
		remove, err := sandbox.CleanWorldNames(req.Remove, "")
		if err != nil {
			return agentapi.WorldResponse{}, &agentapi.UserError{Err: err}
		}
		names := slices.DeleteFunc(append(slices.Clone(cfg.World), add...), func(n string) bool { return slices.Contains(remove, n) })
		if names, err = sandbox.CleanWorldNames(names, ""); err != nil {
			return agentapi.WorldResponse{}, &agentapi.UserError{Err: err}
		}
		if err := applyWorld(a.node.sb, names); err != nil {
			return agentapi.WorldResponse{}, fmt.Errorf("world: %w", err)
		}
		cfg.World = names
		if err := writeSandboxConfig(a.opts.Paths, cfg); err != nil {
			return agentapi.WorldResponse{}, err
		}
	}
	var out agentapi.WorldResponse
	for _, h := range a.node.sb.State().World {
		out.Hosts = append(out.Hosts, agentapi.WorldHost{Name: h.Name, IP: h.IP.String()})
	}
	return out, nil
}
