package agent

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/datapath"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/offline/check"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/sandbox"
)

// reconcileLocked converges to the desired state; a.mu is held.
func (a *Agent) reconcileLocked(_ context.Context) error {
	if a.node == nil {
		return errNotReady
	}
	err := a.node.reconcile(a.store.set())
	if err == nil {
		a.clearErrors()
	}
	return err
}

// podView is a pod with what the agent knows of its endpoint.
type podView struct {
	info     sandbox.PodInfo
	id       uint32
	attached bool
	loaded   bool // its policy is in the datapath at the synced revision
	ep       *policy.Endpoint
}

func (n *node) podViews() []podView {
	pods := n.sb.Pods()
	n.mu.Lock()
	snap := n.snap
	attachedKeys := map[string]uint32{}
	for id, key := range n.attached {
		attachedKeys[key] = id
	}
	loaded := n.loaded
	n.mu.Unlock()
	out := make([]podView, 0, len(pods))
	for _, p := range pods {
		v := podView{info: p}
		v.id, v.attached = attachedKeys[p.Key()]
		v.loaded = v.attached && loaded[v.id]
		if snap != nil {
			v.ep = snap.Endpoints[endpointKey(p)]
		}
		out = append(out, v)
	}
	return out
}

func enforcement(on bool) string {
	if on {
		return "enabled"
	}
	return "disabled"
}

// Status implements agentapi.Backend.
func (a *Agent) Status(context.Context) (agentapi.Status, error) {
	n := a.node
	st := agentapi.Status{
		Instance: a.opts.Paths.Instance, PID: os.Getpid(), StartedAt: a.started,
		StateDir: a.opts.Paths.StateDir, Socket: a.opts.Paths.Socket,
		Errors: a.recentErrors(),
	}
	st.DatapathMode = string(n.dp.Mode())
	st.LocalDelivery = n.dp.LocalDelivery()
	st.Revision = n.dp.Revision()
	views := n.podViews()
	n.mu.Lock()
	desired, problems := n.desired, n.problems
	syncedRev := n.syncedRev
	st.Policies = n.policies
	n.mu.Unlock()
	repoRev := n.repo.Revision()
	ready := len(problems) == 0 && syncedRev == repoRev && len(st.Errors) == 0
	running := map[string]bool{}
	for _, v := range views {
		st.Pods++
		running[v.info.Key()] = true
		if v.info.Running() && v.loaded {
			st.PodsReady++
		} else {
			ready = false
		}
		if v.attached {
			st.Endpoints++
		}
	}
	for k := range desired {
		if !running[k] {
			ready = false
			st.Pods++
		}
	}
	st.Ready = ready
	st.Services = len(n.sb.Services())
	st.Identities = len(a.identities())
	st.Namespaces = a.namespaces(views)
	if n.events != nil {
		st.HubbleAddr, st.HubbleSock = n.events.hubbleAddr, n.events.hubbleSock
		st.MetricsAddr = n.events.metricsAddr
		st.Errors = append(st.Errors, n.events.errors...)
	}
	st.Flows = n.flowStatus()
	return st, nil
}

// Pods implements agentapi.Backend.
func (a *Agent) Pods(context.Context) ([]agentapi.Pod, error) {
	n := a.node
	views := n.podViews()
	n.mu.Lock()
	desired, problems := n.desired, n.problems
	n.mu.Unlock()
	var out []agentapi.Pod
	seen := map[string]bool{}
	for _, v := range views {
		p := v.info
		seen[p.Key()] = true
		ap := agentapi.Pod{
			Namespace: p.Namespace, Name: p.Name, Labels: p.Labels, Node: n.paths.Instance,
			Endpoint: v.id, Status: "Running", Created: podCreated(p),
		}
		if p.OwnerDeployment != "" {
			ap.Owner = "Deployment/" + p.OwnerDeployment
		}
		if len(p.IPs) > 0 {
			ap.IP = p.IPs[0].String()
		}
		if v.ep != nil {
			ap.Identity = uint32(v.ep.Identity)
		}
		switch {
		case !p.Running():
			ap.Status, ap.Message = "Error", "workload process is not running"
		case !v.loaded:
			ap.Status, ap.Message = "Pending", "endpoint not ready: policy not loaded"
		default:
			ap.Ready = true
		}
		if msg, ok := problems[p.Key()]; ok {
			ap.Message = msg
		}
		out = append(out, ap)
	}
	for k := range desired {
		if seen[k] {
			continue
		}
		ns, name := splitKey(k)
		out = append(out, agentapi.Pod{Namespace: ns, Name: name, Node: n.paths.Instance, Status: "Failed", Message: problems[k]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name })
	return out, nil
}

// podCreated is when the pod's namespace was made (its bind mount's time).
func podCreated(p sandbox.PodInfo) (t time.Time) {
	if fi, err := os.Stat(p.NetnsPath); err == nil {
		return fi.ModTime()
	}
	return t
}

// Services implements agentapi.Backend.
func (a *Agent) Services(context.Context) ([]agentapi.Service, error) {
	var out []agentapi.Service
	for _, s := range a.node.sb.Services() {
		as := agentapi.Service{Namespace: s.Namespace, Name: s.Name, Type: "ClusterIP", ClusterIP: s.ClusterIP.String(), Selector: s.Selector}
		for _, p := range s.Ports {
			target := p.TargetPort
			if target == "" {
				target = fmt.Sprint(p.Port)
			}
			as.Ports = append(as.Ports, agentapi.ServicePort{Name: p.Name, Port: uint16(p.Port), TargetPort: target, Protocol: p.Protocol})
			for _, b := range p.Backends {
				as.Backends = append(as.Backends, b.Addr.String())
			}
		}
		out = append(out, as)
	}
	return out, nil
}

// Policies implements agentapi.Backend.
func (a *Agent) Policies(context.Context) ([]agentapi.Policy, error) {
	a.node.mu.Lock()
	snap := a.node.snap
	a.node.mu.Unlock()
	counts := map[resolved.PolicyRef]int{}
	if snap != nil {
		for _, ep := range snap.Endpoints {
			if ep.Policy == nil {
				continue
			}
			seen := map[resolved.PolicyRef]bool{}
			for _, dp := range []*resolved.DirectionPolicy{&ep.Policy.Ingress, &ep.Policy.Egress} {
				for _, r := range dp.Selecting {
					seen[r] = true
				}
			}
			for r := range seen {
				counts[r]++
			}
		}
	}
	set := a.desiredSet()
	var out []agentapi.Policy
	add := func(kind, ns, name string) {
		out = append(out, agentapi.Policy{Kind: kind, Namespace: ns, Name: name,
			Endpoints: counts[resolved.PolicyRef{Kind: kind, Namespace: ns, Name: name}]})
	}
	for _, p := range set.NetworkPolicies {
		add(policy.KindNetworkPolicy, p.Namespace, p.Name)
	}
	for _, p := range set.CNPs {
		add(policy.KindCNP, p.Namespace, p.Name)
	}
	for _, p := range set.CCNPs {
		add(policy.KindCCNP, "", p.Name)
	}
	return out, nil
}

// desiredSet is the desired state of the last reconcile (read without
// waiting for a change in progress).
func (a *Agent) desiredSet() *manifest.Set {
	a.node.mu.Lock()
	defer a.node.mu.Unlock()
	if a.node.lastSet == nil {
		return &manifest.Set{}
	}
	return a.node.lastSet
}

// Endpoints implements agentapi.Backend.
func (a *Agent) Endpoints(context.Context) ([]agentapi.Endpoint, error) {
	n := a.node
	rev := n.dp.Revision()
	var out []agentapi.Endpoint
	for _, v := range n.podViews() {
		if !v.attached {
			continue
		}
		e := agentapi.Endpoint{ID: v.id, Pod: v.info.Key(), Interface: v.info.HostIfName, Status: "not-ready",
			IngressEnforcement: "disabled", EgressEnforcement: "disabled"}
		if len(v.info.IPs) > 0 {
			e.IPv4 = v.info.IPs[0].String()
		}
		if v.ep != nil {
			e.Identity = uint32(v.ep.Identity)
			for _, l := range v.ep.Labels {
				e.Labels = append(e.Labels, l.String())
			}
			if v.ep.Policy != nil {
				e.IngressEnforcement = enforcement(v.ep.Policy.Ingress.Enforced)
				e.EgressEnforcement = enforcement(v.ep.Policy.Egress.Enforced)
			}
		}
		if v.loaded {
			e.Status, e.Revision = "ready", rev
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Identities implements agentapi.Backend.
func (a *Agent) Identities(context.Context) ([]agentapi.Identity, error) {
	return a.identities(), nil
}

func (a *Agent) identities() []agentapi.Identity {
	var out []agentapi.Identity
	for id, ls := range a.node.repo.Allocator().All() {
		ai := agentapi.Identity{ID: uint32(id)}
		for _, l := range ls {
			ai.Labels = append(ai.Labels, l.String())
		}
		out = append(out, ai)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// BPFPolicy implements agentapi.Backend: the entries read back from the
// kernel's maps, not the agent's intent.
func (a *Agent) BPFPolicy(_ context.Context, id uint32) ([]agentapi.EndpointPolicy, error) {
	n := a.node
	var ids []uint32
	keys := map[uint32]string{}
	n.mu.Lock()
	for eid, key := range n.attached {
		keys[eid] = key
		if id == 0 || eid == id {
			ids = append(ids, eid)
		}
	}
	n.mu.Unlock()
	if id != 0 && len(ids) == 0 {
		return nil, &agentapi.NotFoundError{What: fmt.Sprintf("endpoint %d", id)}
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	rev := n.dp.Revision()
	var out []agentapi.EndpointPolicy
	for _, eid := range ids {
		d, err := n.dp.DumpEndpoint(eid)
		if err != nil {
			return nil, err
		}
		out = append(out, endpointPolicyView(d, keys[eid], rev))
	}
	return out, nil
}

func endpointPolicyView(d *datapath.EndpointDump, pod string, rev uint64) agentapi.EndpointPolicy {
	ep := agentapi.EndpointPolicy{
		EndpointID: d.Endpoint.ID, Pod: pod, Identity: uint32(d.Endpoint.Identity),
		IngressEnforcement: enforcement(d.EnforceIngress), EgressEnforcement: enforcement(d.EnforceEgress),
	}
	if d.Ready {
		ep.Revision = rev
	}
	for _, e := range d.Entries {
		pe := agentapi.PolicyEntry{
			Direction: capitalize(e.Direction.String()),
			Verdict:   e.Verdict.String(),
		}
		if len(e.Identities) == 0 {
			pe.Peer = fmt.Sprintf("selector %d (no identities)", e.Selector)
		} else {
			parts := make([]string, len(e.Identities))
			for i, id := range e.Identities {
				parts[i] = id.String()
				pe.Identities = append(pe.Identities, uint32(id))
			}
			pe.Peer = strings.Join(parts, ",")
		}
		switch {
		case e.Proto == resolved.ProtoAny && e.PortLo == 0 && e.PortHi == 65535:
			pe.Port = "ANY"
		case e.PortLo == 0 && e.PortHi == 65535:
			pe.Port = "ANY/" + e.Proto.String()
		case e.PortLo == e.PortHi:
			pe.Port = fmt.Sprintf("%d/%s", e.PortLo, e.Proto)
		default:
			pe.Port = fmt.Sprintf("%d-%d/%s", e.PortLo, e.PortHi, e.Proto)
		}
		for _, r := range e.Policies {
			pe.Policies = append(pe.Policies, r.Kind+"/"+r.String())
		}
		ep.Entries = append(ep.Entries, pe)
	}
	return ep
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// namespaces lists the namespaces of the instance: its Namespace objects,
// its pods' namespaces, and default and kube-system (sorted).
func (a *Agent) namespaces(views []podView) []string {
	seen := map[string]bool{"default": true, "kube-system": true}
	for _, o := range a.desiredSet().Objects {
		if o.Kind == "Namespace" {
			seen[o.Name] = true
		}
	}
	for _, v := range views {
		seen[v.info.Namespace] = true
	}
	out := make([]string, 0, len(seen))
	for ns := range seen {
		out = append(out, ns)
	}
	sort.Strings(out)
	return out
}

// Trace implements agentapi.Backend: the offline trace (check.State.Trace)
// on the agent's live repository, the state its datapath enforces.
func (a *Agent) Trace(_ context.Context, req agentapi.TraceRequest) (agentapi.TraceResponse, error) {
	n := a.node
	st := &check.State{Repo: n.repo, Snap: n.repo.Snapshot(), Set: a.desiredSet()}
	var b strings.Builder
	err := st.Trace(&b, check.TraceQuery{
		Src: req.Src, Dst: req.Dst, Port: req.Port, Protocol: req.Protocol,
		SrcIdentity: identity.NumericIdentity(req.SrcIdentity), DstIdentity: identity.NumericIdentity(req.DstIdentity),
	})
	if err != nil {
		return agentapi.TraceResponse{}, &agentapi.UserError{Err: err}
	}
	return agentapi.TraceResponse{Text: b.String()}, nil
}
