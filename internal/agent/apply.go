package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/metrics"
	httpproxy "github.com/bulwark-net/bulwark/internal/proxy/http"
)

// DecodeDocuments decodes every document and, with validate, checks it as
// the API server and Cilium would; any problem in any document fails the
// whole batch (the error lists every problem). It is what both the CLI
// (before contacting the agent) and the agent (which trusts no client) run.
// Deletion only needs each document's kind, namespace and name, so a
// metadata-only document is enough there.
func DecodeDocuments(docs []agentapi.Document, validate bool) ([]*manifest.Object, error) {
	var objs []*manifest.Object
	var errs manifest.Errors
	for _, d := range docs {
		o, e := manifest.Decode(d.Source, d.Data)
		objs = append(objs, o...)
		errs = append(errs, e...)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	seen := map[objectKey]*manifest.Object{}
	for _, o := range objs {
		if u, ok := o.Obj.(*manifest.Unsupported); ok {
			if u.Refused && validate {
				errs = append(errs, &manifest.Error{Source: o.Source, Kind: o.Kind, Namespace: o.Namespace, Name: o.Name, Reason: u.Note})
			}
			if u.IsEnvoyConfig() && validate {
				if _, err := httpproxy.ParseEnvoyConfig(u.Raw); err != nil {
					errs = append(errs, &manifest.Error{Source: o.Source, Kind: o.Kind, Namespace: o.Namespace, Name: o.Name,
						Reason: "not enforceable as written, refused rather than ignored: " + err.Error()})
				}
			}
			continue
		}
		k := keyOf(o)
		if prev, ok := seen[k]; ok {
			errs = append(errs, &manifest.Error{Source: o.Source, Kind: o.Kind, Namespace: o.Namespace, Name: o.Name,
				Reason: fmt.Sprintf("defined twice (first at %s)", prev.Source)})
		}
		seen[k] = o
	}
	if len(errs) > 0 {
		return nil, errs
	}
	if !validate {
		return objs, nil
	}
	if err := validateObjects(objs); err != nil {
		return nil, err
	}
	return objs, nil
}

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
	objs, err := DecodeDocuments(req.Documents, !del)
	if err != nil {
		a.countPolicyChange(false)
		return agentapi.ApplyResponse{}, &agentapi.UserError{Err: err}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
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
	if err := a.store.commit(p); err != nil {
		return agentapi.ApplyResponse{}, err
	}
	if p.changed {
		a.log.Info("desired state changed", "revision", a.store.revision, "delete", del, "objects", len(objs))
	}
	if err := a.reconcileLocked(ctx); err != nil {
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
