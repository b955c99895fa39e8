package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/metrics"
	"github.com/bulwark-net/bulwark/internal/offline/validate"
)

// Apply implements agentapi.Backend: create or update every object, all or
// nothing, then converge.
func (a *Agent) Apply(ctx context.Context, req agentapi.ApplyRequest) (agentapi.ApplyResponse, error) {
	return a.change(ctx, req, false)
}

// Delete implements agentapi.Backend: remove every named object, all or
// nothing, then converge.
func (a *Agent) Delete(ctx context.Context, req agentapi.ApplyRequest) (agentapi.ApplyResponse, error) {
	return a.change(ctx, req, true)
}

func (a *Agent) change(ctx context.Context, req agentapi.ApplyRequest, del bool) (agentapi.ApplyResponse, error) {
	start := time.Now()
	objs, err := validate.Documents(req.Documents, !del)
	if err != nil {
		a.countPolicyChange(false)
		return agentapi.ApplyResponse{}, &agentapi.UserError{Err: err}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.abandoned(ctx, "before it started"); err != nil {
		return agentapi.ApplyResponse{}, err
	}
	p := a.store.begin()
	var resp agentapi.ApplyResponse
	for _, o := range objs {
		ch := agentapi.ObjectChange{APIVersion: o.APIVersion, Kind: o.Kind, Namespace: o.Namespace, Name: o.Name, Source: o.Source.String()}
		if u, ok := o.Obj.(*manifest.Unsupported); ok && !u.IsEnvoyConfig() {
			ch.Action = "ignored (" + u.Note + ")"
			resp.Changes = append(resp.Changes, ch)
			continue
		}
		if del {
			ch.Action = p.remove(o)
		} else if ch.Action, err = p.upsert(o); err != nil {
			return agentapi.ApplyResponse{}, err
		}
		resp.Changes = append(resp.Changes, ch)
	}
	// Deleting a namespace deletes everything in it, as in Kubernetes.
	if del {
		resp.Changes = append(resp.Changes, p.cascadeNamespaces(objs)...)
	}
	// Resolve the whole new state before committing: a change the policy
	// engine cannot resolve is refused, never half-applied.
	if p.changed {
		if err := a.node.check(p.set()); err != nil {
			a.countPolicyChange(false)
			return agentapi.ApplyResponse{}, &agentapi.UserError{Err: fmt.Errorf("rejected, nothing changed: %w", err)}
		}
	}
	// The commit point: a client that has given up (its deadline passed,
	// or it hung up) never sees its change applied later.
	if err := a.abandoned(ctx, "before it was committed"); err != nil {
		return agentapi.ApplyResponse{}, err
	}
	if err := a.store.commit(p); err != nil {
		a.countPolicyChange(false)
		return agentapi.ApplyResponse{}, fmt.Errorf("not applied, nothing changed (the state directory %s refused it): %w", a.opts.Paths.StateDir, err)
	}
	if p.changed {
		a.log.Info("desired state changed", "revision", a.store.revision, "delete", del, "objects", len(objs))
	}
	// Committed: converge whatever the client does now.
	defer func() {
		if agentapi.Expired(ctx) != nil {
			a.log.Warn("change completed after its client gave up", "revision", a.store.revision, "delete", del, "objects", len(objs))
		}
	}()
	if err := a.reconcileLocked(context.WithoutCancel(ctx)); err != nil {
		a.recordError(err)
		return agentapi.ApplyResponse{}, fmt.Errorf("stored, but not yet in force: %w", err)
	}
	resp.Revision = a.node.revision()
	if p.changed {
		a.countPolicyChange(true)
		if m := a.metrics(); m != nil {
			m.PolicyImplementationDelay(time.Since(start))
		}
	}
	return resp, nil
}

// abandoned reports a change whose client gave up (its deadline passed or
// it hung up) at the point named by when, and logs it: nothing of it is
// applied.
func (a *Agent) abandoned(ctx context.Context, when string) error {
	err := agentapi.Expired(ctx)
	if err == nil {
		return nil
	}
	a.log.Warn("change abandoned by its client "+when+"; not applied", "err", err)
	a.countPolicyChange(false)
	return fmt.Errorf("the client gave up %s (%w): nothing was changed", when, err)
}

func (a *Agent) metrics() *metrics.Metrics {
	if a.node == nil || a.node.events == nil {
		return nil
	}
	return a.node.events.metrics
}

func (a *Agent) countPolicyChange(ok bool) {
	m := a.metrics()
	if m == nil {
		return
	}
	if ok {
		m.PolicyChange("success")
		return
	}
	m.PolicyImportError()
	m.PolicyChange("failure")
}

// errNotReady is reported when the node is not open.
var errNotReady = errors.New("agent is starting")
