// Package observer turns datapath events into Hubble flows: it resolves the
// endpoints, identities and policies an event refers to, keeps a bounded ring
// of recent flows with live followers, filters flows the way Hubble does, and
// serves the Hubble Observer gRPC API so that the stock hubble CLI and
// `bulwark observe` read Bulwark's flows.
//
// The event path (Handle) never blocks on readers: slow followers lose flows
// and are told how many.
package observer

import (
	"context"
	"fmt"
	"sync"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
)

// DefaultCapacity is the default number of flows the ring keeps.
const DefaultCapacity = 4096

// FlowSink consumes every flow as it is built (metrics). It runs on the
// event path: it must be fast and must not block or keep ev.
type FlowSink interface {
	ObserveFlow(ev *event.Event, f *flowpb.Flow)
}

// Options configure an Observer.
type Options struct {
	// NodeName is the node's name, stamped on every flow.
	NodeName string
	// Resolver gives endpoint, identity and policy metadata; nil leaves
	// flows with what the event carries.
	Resolver Resolver
	// Capacity of the flow ring; 0 means DefaultCapacity.
	Capacity int
	// Sinks see every flow (e.g. metrics.Metrics).
	Sinks []FlowSink
}

// Observer builds flows from events and keeps the recent ones.
type Observer struct {
	conv      converter
	ring      *Ring
	sinks     []FlowSink
	nodeName  string
	started   time.Time
	namespace sync.Map // namespace name → struct{}: every namespace seen in a flow
}

// New returns an Observer.
func New(opts Options) (*Observer, error) {
	if opts.Capacity < 0 {
		return nil, fmt.Errorf("observer: capacity %d: must not be negative", opts.Capacity)
	}
	capacity := opts.Capacity
	if capacity == 0 {
		capacity = DefaultCapacity
	}
	matchTyper, _ := opts.Resolver.(MatchTyper)
	return &Observer{
		conv:     converter{resolver: opts.Resolver, matchTyper: matchTyper, nodeName: opts.NodeName, ids: newFlowIDs()},
		ring:     NewRing(capacity),
		sinks:    opts.Sinks,
		nodeName: opts.NodeName,
		started:  time.Now(),
	}, nil
}

// Run consumes events until ctx ends or events is closed.
func (o *Observer) Run(ctx context.Context, events <-chan event.Event) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			o.Handle(&ev)
		}
	}
}

// Handle turns one event into a flow, records it and hands it to the sinks.
// It is safe for concurrent use.
func (o *Observer) Handle(ev *event.Event) *flowpb.Flow {
	f := o.conv.toFlow(ev)
	o.noteNamespace(f.GetSource().GetNamespace())
	o.noteNamespace(f.GetDestination().GetNamespace())
	o.ring.Push(f)
	for _, s := range o.sinks {
		s.ObserveFlow(ev, f)
	}
	return f
}

func (o *Observer) noteNamespace(ns string) {
	if ns == "" {
		return
	}
	if _, ok := o.namespace.Load(ns); !ok {
		o.namespace.Store(ns, struct{}{})
	}
}

// Namespaces returns the namespaces seen in flows, unsorted.
func (o *Observer) Namespaces() []string {
	var out []string
	o.namespace.Range(func(k, _ any) bool {
		out = append(out, k.(string))
		return true
	})
	return out
}

// Ring is the observer's flow ring.
func (o *Observer) Ring() *Ring { return o.ring }

// NodeName is the node stamped on flows.
func (o *Observer) NodeName() string { return o.nodeName }

// Uptime is the time since New.
func (o *Observer) Uptime() time.Duration { return time.Since(o.started) }
