package agent

import (
	"context"
	"net"
	"net/netip"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/metrics"
	"github.com/bulwark-net/bulwark/internal/observer"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// eventPump carries datapath events to the observer (flows, Hubble API)
// and the metrics.
type eventPump struct {
	cancel      context.CancelFunc
	done        chan struct{}
	obs         *observer.Observer
	hubble      *observer.Server
	hubbleAddr  string
	hubbleSock  string
	metricsAddr string
	metrics     *metrics.Metrics
	errors      []string
}

// startEventPump starts reading events and serving Hubble. Problems (a
// port in use) are kept for the status and never stop the agent:
// enforcement does not depend on visibility.
func startEventPump(ctx context.Context, n *node, o Options) *eventPump {
	ctx, cancel := context.WithCancel(ctx)
	p := &eventPump{cancel: cancel, done: make(chan struct{})}
	m, err := metrics.New(metrics.Options{CiliumCompat: true, Datapath: datapathMetrics{n.dp}, State: agentMetricsState{n}})
	if err != nil {
		p.errors = append(p.errors, err.Error())
		close(p.done)
		return p
	}
	p.metrics = m
	if o.MetricsAddr != "" {
		l, err := net.Listen("tcp", o.MetricsAddr)
		if err != nil {
			p.errors = append(p.errors, "metrics: "+err.Error())
			n.log.Error("metrics server", "err", err)
		} else {
			p.metricsAddr = l.Addr().String()
			go func() {
				if err := m.ServeListener(ctx, l); err != nil {
					n.log.Error("metrics server", "err", err)
				}
			}()
		}
	}
	obs, err := observer.New(observer.Options{NodeName: n.paths.Instance, Resolver: resolver{n}, Sinks: []observer.FlowSink{m}})
	if err != nil {
		p.errors = append(p.errors, "observer: "+err.Error())
		close(p.done)
		return p
	}
	p.obs = obs
	srv, err := observer.NewServer(observer.ServerOptions{Observer: obs, UnixSocket: n.paths.Hubble, TCPAddress: o.HubbleAddr})
	if err == nil {
		err = srv.Start()
	}
	if err != nil {
		p.errors = append(p.errors, err.Error())
		n.log.Error("hubble server", "err", err)
	} else {
		p.hubble = srv
		p.hubbleSock = n.paths.Hubble
		if a := srv.TCPAddr(); a != nil {
			p.hubbleAddr = a.String()
		}
	}
	events, err := n.dp.Events(ctx)
	if err != nil {
		p.errors = append(p.errors, "events: "+err.Error())
		n.log.Error("datapath events", "err", err)
		close(p.done)
		return p
	}
	go func() {
		defer close(p.done)
		_ = obs.Run(ctx, events)
	}()
	return p
}

func (p *eventPump) stop() {
	p.cancel()
	<-p.done
	if p.hubble != nil {
		p.hubble.Stop()
	}
}

// resolver gives the observer the agent's view of endpoints, identities
// and policies. It reads the last synced snapshot: what the datapath
// enforces.
type resolver struct{ n *node }

func (r resolver) snapshot() *policy.Snapshot {
	r.n.mu.Lock()
	defer r.n.mu.Unlock()
	return r.n.snap
}

func endpointInfo(id uint32, ep *policy.Endpoint) observer.EndpointInfo {
	labels := make([]string, 0, len(ep.Labels))
	for _, l := range ep.Labels {
		labels = append(labels, l.String())
	}
	return observer.EndpointInfo{ID: id, Identity: ep.Identity, Namespace: ep.Key.Namespace, PodName: ep.Key.Name, Labels: labels}
}

func (r resolver) EndpointByID(id uint32) (observer.EndpointInfo, bool) {
	r.n.mu.Lock()
	key, ok := r.n.attached[id]
	snap := r.n.snap
	r.n.mu.Unlock()
	if !ok || snap == nil {
		return observer.EndpointInfo{}, false
	}
	ns, name := splitKey(key)
	ep := snap.Endpoints[policy.EndpointKey{Namespace: ns, Name: name}]
	if ep == nil {
		return observer.EndpointInfo{}, false
	}
	return endpointInfo(id, ep), true
}

func (r resolver) EndpointByIP(ip netip.Addr) (observer.EndpointInfo, bool) {
	snap := r.snapshot()
	if snap == nil {
		return observer.EndpointInfo{}, false
	}
	key, ok := snap.IPCache.Endpoint(ip)
	if !ok {
		return observer.EndpointInfo{}, false
	}
	ep := snap.Endpoints[key]
	if ep == nil {
		return observer.EndpointInfo{}, false
	}
	id, _ := r.n.ids.lookup(key.String())
	return endpointInfo(id, ep), true
}

func (r resolver) IdentityLabels(id identity.NumericIdentity) []string {
	snap := r.snapshot()
	if snap == nil {
		return nil
	}
	ls, ok := snap.Labels(id)
	if !ok {
		return nil
	}
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.String()
	}
	return out
}

func (r resolver) RulePolicies(ruleID uint32) []resolved.PolicyRef {
	return r.n.dp.RulePolicies(ruleID)
}

func (r resolver) SelectingPolicies(endpointID uint32, dir resolved.Direction) []resolved.PolicyRef {
	r.n.mu.Lock()
	key, ok := r.n.attached[endpointID]
	snap := r.n.snap
	r.n.mu.Unlock()
	if !ok || snap == nil {
		return nil
	}
	ns, name := splitKey(key)
	ep := snap.Endpoints[policy.EndpointKey{Namespace: ns, Name: name}]
	if ep == nil || ep.Policy == nil {
		return nil
	}
	return ep.Policy.Dir(dir).Selecting
}
