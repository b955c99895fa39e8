package agent

import (
	"maps"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/bulwark-net/bulwark/internal/datapath"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/observer"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// eventView is the observer's lookup table for one published state of the
// node: the synced policy snapshot, the attached endpoints, their endpoint
// IDs, the identities' labels and the names of the datapath's rules.
//
// Invariant: immutable once published. The event path reads it with one
// atomic load, takes no lock and allocates nothing; every change of an
// input publishes a whole new view (see node.publishEventView). Flows
// share its slices, which nobody mutates.
type eventView struct {
	snap *policy.Snapshot // nil before the first sync: nothing resolves
	// byID holds the attached endpoints that are in the snapshot; the
	// info's ID is the attachment's.
	byID map[uint32]*endpointView
	// byIP holds every pod address of the ipcache (unmapped); the info's
	// ID is the pod's endpoint ID, 0 when it has none.
	byIP map[netip.Addr]*endpointView
	// labels of each snapshot endpoint, kept so the next view built for
	// the same immutable *policy.Endpoint reuses the strings.
	labels map[*policy.Endpoint][]string
	// identities maps every identity the allocator knew at build time to
	// its labels in "source:key=value" form.
	identities map[identity.NumericIdentity][]string
	// rules says what is behind each datapath rule id ever synced.
	rules map[uint32]datapath.RuleInfo
}

// endpointView is one endpoint as flows show it.
type endpointView struct {
	ep   *policy.Endpoint
	info observer.EndpointInfo
}

// eventViewInput is what a view is built from.
type eventViewInput struct {
	Snap *policy.Snapshot
	// Attached maps endpoint IDs to pod keys ("namespace/name"); the
	// builder only reads it.
	Attached map[uint32]string
	// EndpointID returns a pod's endpoint ID (nil: none has one).
	EndpointID func(podKey string) (uint32, bool)
	// Identities are the allocator's identities with their labels.
	Identities map[identity.NumericIdentity]identity.Labels
	// Rules says what is behind datapath rule ids; shared, not copied:
	// the caller never mutates a map it passed.
	Rules map[uint32]datapath.RuleInfo
}

// buildEventView computes the view of in. prev, the view published before
// by the same node (or nil), lends its label strings: an endpoint is
// immutable once in a snapshot, and an identity keeps its labels for the
// life of the allocator, so equal keys format to equal strings.
func buildEventView(in eventViewInput, prev *eventView) *eventView {
	v := &eventView{snap: in.Snap, rules: in.Rules}
	if in.Snap == nil {
		return v
	}
	var prevLabels map[*policy.Endpoint][]string
	var prevIdentities map[identity.NumericIdentity][]string
	if prev != nil {
		prevLabels, prevIdentities = prev.labels, prev.identities
	}
	snap := in.Snap

	v.labels = make(map[*policy.Endpoint][]string, len(snap.Endpoints))
	for _, ep := range snap.Endpoints {
		ls, ok := prevLabels[ep]
		if !ok {
			ls = formatLabels(ep.Labels)
		}
		v.labels[ep] = ls
	}
	view := func(id uint32, ep *policy.Endpoint) *endpointView {
		return &endpointView{ep: ep, info: observer.EndpointInfo{
			ID: id, Identity: ep.Identity, Namespace: ep.Key.Namespace, PodName: ep.Key.Name, Labels: v.labels[ep],
		}}
	}

	v.byID = make(map[uint32]*endpointView, len(in.Attached))
	for id, key := range in.Attached {
		ns, name := splitKey(key)
		if ep := snap.Endpoints[policy.EndpointKey{Namespace: ns, Name: name}]; ep != nil {
			v.byID[id] = view(id, ep)
		}
	}

	// The ipcache's pod addresses are the endpoints' addresses (an
	// address two pods claim belongs to the one the ipcache names).
	v.byIP = make(map[netip.Addr]*endpointView, len(snap.Endpoints))
	for key, ep := range snap.Endpoints {
		var ev *endpointView // one per pod, whatever its number of addresses
		for _, a := range ep.IPs {
			a = a.Unmap()
			if owner, ok := snap.IPCache.Endpoint(a); !ok || owner != key {
				continue
			}
			if ev == nil {
				var id uint32
				if in.EndpointID != nil {
					id, _ = in.EndpointID(key.String())
				}
				ev = view(id, ep)
			}
			v.byIP[a] = ev
		}
	}

	v.identities = make(map[identity.NumericIdentity][]string, len(in.Identities))
	for id, ls := range in.Identities {
		s, ok := prevIdentities[id]
		if !ok {
			s = formatLabels(ls)
		}
		v.identities[id] = s
	}
	return v
}

func formatLabels(ls identity.Labels) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.String()
	}
	return out
}

func (v *eventView) endpointByID(id uint32) (observer.EndpointInfo, bool) {
	if e := v.byID[id]; e != nil {
		return e.info, true
	}
	return observer.EndpointInfo{}, false
}

func (v *eventView) endpointByIP(ip netip.Addr) (observer.EndpointInfo, bool) {
	if e := v.byIP[ip.Unmap()]; e != nil {
		return e.info, true
	}
	return observer.EndpointInfo{}, false
}

func (v *eventView) identityLabels(id identity.NumericIdentity) []string {
	return v.identities[id]
}

func (v *eventView) rulePolicies(ruleID uint32) []resolved.PolicyRef {
	return v.rules[ruleID].Policies
}

func (v *eventView) selectingPolicies(endpointID uint32, dir resolved.Direction) []resolved.PolicyRef {
	e := v.byID[endpointID]
	if e == nil || e.ep.Policy == nil {
		return nil
	}
	return e.ep.Policy.Dir(dir).Selecting
}

// eventViews publishes the node's event views.
type eventViews struct {
	mu sync.Mutex // serialises publishers, so the last one stored is the newest state
	// rules holds the rules of the last two successful datapath syncs,
	// the later winning (what the datapath answers for a rule id): events
	// read just before a sync still find their rule, and churned rules do
	// not pile up. Copy-on-write under mu: published views share it.
	rules     map[uint32]datapath.RuleInfo
	lastRules map[uint32]datapath.RuleInfo // the last sync's alone
	cur       atomic.Pointer[eventView]
}

// load returns the current view; nil before the first publication.
func (e *eventViews) load() *eventView { return e.cur.Load() }

// addRules records the rule names of the tables a datapath sync loaded.
// The next publishEventView makes them visible.
func (n *node) addRules(c *datapath.Compiled) {
	if c == nil || len(c.Rules) == 0 {
		return
	}
	n.views.mu.Lock()
	defer n.views.mu.Unlock()
	rules := make(map[uint32]datapath.RuleInfo, len(n.views.lastRules)+len(c.Rules))
	maps.Copy(rules, n.views.lastRules)
	maps.Copy(rules, c.Rules)
	n.views.rules = rules
	n.views.lastRules = c.Rules
}

// publishEventView builds the view of the node's current state (synced
// snapshot, attachments, endpoint IDs, identities, rule names) and makes
// it the one the observer reads. Call it after any of them changes.
func (n *node) publishEventView() {
	n.views.mu.Lock()
	defer n.views.mu.Unlock()
	n.mu.Lock()
	snap := n.snap
	attached := maps.Clone(n.attached)
	n.mu.Unlock()
	in := eventViewInput{Snap: snap, Attached: attached, Rules: n.views.rules}
	if n.ids != nil {
		in.EndpointID = n.ids.lookup
	}
	if snap != nil && n.repo != nil {
		in.Identities = n.repo.Allocator().All()
	}
	n.views.cur.Store(buildEventView(in, n.views.cur.Load()))
	n.publishL7View()
}
