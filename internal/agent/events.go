package agent

import (
	"context"
	"net"
	"net/netip"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/metrics"
	"github.com/bulwark-net/bulwark/internal/observer"
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

// startEventPump starts reading events and serving Hubble and metrics on
// the instance's listeners (bound by Run, which fails when one cannot be
// bound). Later problems are kept for the status and never stop the
// agent: enforcement does not depend on visibility.
func startEventPump(ctx context.Context, n *node, lns *listeners) *eventPump {
	ctx, cancel := context.WithCancel(ctx)
	p := &eventPump{cancel: cancel, done: make(chan struct{})}
	// The view of what is already attached (adopted endpoints) and
	// synced; every later change publishes a new one.
	n.publishEventView()
	m, err := metrics.New(metrics.Options{CiliumCompat: true, Datapath: datapathMetrics{n.dp}, State: agentMetricsState{n}})
	if err != nil {
		p.errors = append(p.errors, err.Error())
		close(p.done)
		return p
	}
	p.metrics = m
	if l := lns.metrics; l != nil {
		p.metricsAddr = l.Addr().String()
		go func() {
			if err := m.ServeListener(ctx, l); err != nil {
				n.log.Error("metrics server", "err", err)
			}
		}()
	}
	nodeName := n.paths.Instance
	if n.kubeNode != "" {
		nodeName = n.kubeNode
	}
	obs, err := observer.New(observer.Options{NodeName: nodeName, Resolver: resolver{n}, Sinks: []observer.FlowSink{m}})
	if err != nil {
		p.errors = append(p.errors, "observer: "+err.Error())
		close(p.done)
		return p
	}
	p.obs = obs
	hubbleLns := []net.Listener{lns.hubbleUnix}
	if lns.hubbleTCP != nil {
		hubbleLns = append(hubbleLns, lns.hubbleTCP)
	}
	srv, err := observer.NewServer(observer.ServerOptions{Observer: obs, Listeners: hubbleLns})
	if err == nil {
		err = srv.Start()
	}
	if err != nil {
		p.errors = append(p.errors, err.Error())
		n.log.Error("hubble server", "err", err)
	} else {
		p.hubble = srv
		p.hubbleSock = lns.hubbleUnix.Addr().String()
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
// and policies: what the datapath enforces (the last synced snapshot and
// the attached endpoints). It reads the node's published eventView: one
// atomic load and map lookups, no lock and no allocation per event.
type resolver struct{ n *node }

func (r resolver) EndpointByID(id uint32) (observer.EndpointInfo, bool) {
	if v := r.n.views.load(); v != nil {
		return v.endpointByID(id)
	}
	return observer.EndpointInfo{}, false
}

func (r resolver) EndpointByIP(ip netip.Addr) (observer.EndpointInfo, bool) {
	if v := r.n.views.load(); v != nil {
		return v.endpointByIP(ip)
	}
	return observer.EndpointInfo{}, false
}

func (r resolver) IdentityLabels(id identity.NumericIdentity) []string {
	if v := r.n.views.load(); v != nil {
		return v.identityLabels(id)
	}
	return nil
}

func (r resolver) RulePolicies(ruleID uint32) []resolved.PolicyRef {
	if v := r.n.views.load(); v != nil {
		return v.rulePolicies(ruleID)
	}
	return nil
}

// RuleMatchType makes resolver an observer.MatchTyper: what the
// datapath answers for the rule id (event.MatchNone when unknown).
func (r resolver) RuleMatchType(ruleID uint32) event.MatchType {
	if v := r.n.views.load(); v != nil {
		return v.rules[ruleID].MatchType
	}
	return event.MatchNone
}

func (r resolver) SelectingPolicies(endpointID uint32, dir resolved.Direction) []resolved.PolicyRef {
	if v := r.n.views.load(); v != nil {
		return v.selectingPolicies(endpointID, dir)
	}
	return nil
}
