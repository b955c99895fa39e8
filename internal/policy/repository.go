package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"sync"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/api"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// Options configures a Repository.
type Options struct {
	// Allocator to share with other components; nil creates one. Its
	// identities (restored ones too) join selector membership when the
	// repository uses them (a pod, a CIDR prefix, a learned address).
	Allocator *identity.Allocator
	// SelectorIDs restores the selector numbering of a previous run (what
	// Repository.SelectorIDs returned): a selector whose key is listed
	// gets that ID back when it is free. Optional: IDs are derived from
	// the selectors' keys anyway, this only pins the order-dependent
	// outcome of hash collisions.
	SelectorIDs map[string]resolved.SelectorID
}

// ObjectRef names an object to delete. Kind is one of Namespace, Pod,
// Service, NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy.
type ObjectRef struct {
	Kind, Namespace, Name string
}

func (r ObjectRef) String() string {
	if r.Namespace == "" {
		return r.Kind + " " + r.Name
	}
	return r.Kind + " " + r.Namespace + "/" + r.Name
}

// Change reports what an update changed. Consumers apply exactly these:
// recompile the listed endpoints' tables, refresh the listed selectors'
// membership (a listed selector absent from the snapshot was released),
// reload the ipcache if IPCache is set.
type Change struct {
	Revision  uint64
	Endpoints []EndpointKey // added, or policy, identity or address changed
	Removed   []EndpointKey
	Selectors []resolved.SelectorID
	IPCache   bool
}

// Empty reports whether nothing changed.
func (c Change) Empty() bool {
	return len(c.Endpoints) == 0 && len(c.Removed) == 0 && len(c.Selectors) == 0 && !c.IPCache
}

// ObjectError is an update error about one object (its text already names
// the object and the field).
type ObjectError struct {
	Kind, Namespace, Name string
	Err                   error
}

func (e *ObjectError) Error() string { return e.Err.Error() }
func (e *ObjectError) Unwrap() error { return e.Err }

type installedPolicy struct {
	cp     *compiledPolicy
	key    string
	selIDs map[string]resolved.SelectorID // peer key → selector
	// servicePeers are the toServices peers of items, resolved against
	// the Services present when the policy was (re)installed.
	servicePeers map[*ruleItem][]peerSpec
	// namedSelIDs are the derived egress named-port selectors (see
	// namedport.go), by key; they follow the pods' named ports.
	namedSelIDs map[string]resolved.SelectorID
}

// itemPeers returns an item's peers, toServices peers included.
func (ip *installedPolicy) itemPeers(it *ruleItem) []peerSpec {
	if extra := ip.servicePeers[it]; len(extra) > 0 {
		return append(append([]peerSpec(nil), it.peers...), extra...)
	}
	return it.peers
}

type namedPortValue struct {
	proto resolved.Protocol
	port  uint16
}

// Repository holds the cluster state that policy depends on (namespaces,
// pods, policies, learned FQDNs) and keeps every endpoint's resolved policy
// up to date incrementally. Safe for concurrent use.
//
// Invariants after every call: each endpoint's Policy is the resolution of
// the current state; selector membership covers every allocated identity;
// an update that fails changes nothing.
type Repository struct {
	mu    sync.Mutex
	alloc *identity.Allocator

	idLabels   map[identity.NumericIdentity]identity.Labels // every identity in use, reserved ones always
	namespaces map[string]map[string]string
	services   map[EndpointKey]*corev1.Service
	endpoints  map[EndpointKey]*Endpoint
	byIdentity map[identity.NumericIdentity]map[EndpointKey]struct{}
	podIPs     map[netip.Addr]EndpointKey
	policies   map[string]*installedPolicy
	// policiesByNS indexes policies by namespace ("" for clusterwide): a
	// namespaced policy's rules only select endpoints of its namespace.
	policiesByNS map[string]map[string]*installedPolicy
	idNS         map[identity.NumericIdentity]string // namespace of a pod identity
	// memo shares resolutions within one update between endpoints with the
	// same identity and container ports.
	memo       map[string]*resolved.EndpointPolicy
	identRules map[identity.NumericIdentity][]*compiledRule

	sels       *selectorCache
	fqdn       *fqdnState
	cidrRefs   map[netip.Prefix]int
	cidrIDs    map[netip.Prefix]identity.NumericIdentity
	namedPorts map[string]map[namedPortValue]int // port name → values over all pods

	revision uint64
	// accumulated since the last Changes() call
	pendEndpoints map[EndpointKey]bool // true: removed
	pendIPCache   bool
	// per-update work
	pendIPCacheLocal *bool
	dirty            map[EndpointKey]struct{}
	namedChanged     bool // the set of values some pod gives a port name changed
	// namedIdents: identities whose pods (or their named ports) changed
	// in this update: their membership in derived named-port selectors
	// is recomputed (an identity's labels never change, so no other
	// identity's membership can).
	namedIdents map[identity.NumericIdentity]struct{}
	// moved: endpoints whose address changed (reported even if their
	// policy did not)
	moved map[EndpointKey]bool
	// unusedIDs may have lost their last user (pod, CIDR prefix or learned
	// address) during the update; see collectIdentities.
	unusedIDs map[identity.NumericIdentity]struct{}

	snap    *Snapshot // last snapshot, reused while nothing changed
	ipcache *IPCache  // last ipcache, reused while no address or prefix changed
	// ipPending: learned addresses whose host entry changed since ipcache
	// was built (applied by the next snapshot as an overlay); only used
	// while ipcache is not nil.
	ipPending map[netip.Addr]struct{}

	fqdnJournal
}

// NewRepository returns an empty repository.
func NewRepository(opts Options) *Repository {
	a := opts.Allocator
	if a == nil {
		a = identity.NewAllocator()
	}
	// Only identities in use are selector members (collectIdentities
	// keeps it so): identities restored into the allocator join when they
	// are used, so that a restarted repository computes the same
	// membership as the one that ran before.
	idLabels := map[identity.NumericIdentity]identity.Labels{}
	for _, id := range identity.ReservedIdentities() {
		if ls, ok := a.Lookup(id); ok {
			idLabels[id] = ls
		}
	}
	r := &Repository{
		alloc:         a,
		idLabels:      idLabels,
		namespaces:    map[string]map[string]string{},
		services:      map[EndpointKey]*corev1.Service{},
		endpoints:     map[EndpointKey]*Endpoint{},
		byIdentity:    map[identity.NumericIdentity]map[EndpointKey]struct{}{},
		podIPs:        map[netip.Addr]EndpointKey{},
		policies:      map[string]*installedPolicy{},
		policiesByNS:  map[string]map[string]*installedPolicy{},
		idNS:          map[identity.NumericIdentity]string{},
		identRules:    map[identity.NumericIdentity][]*compiledRule{},
		sels:          newSelectorCache(opts.SelectorIDs),
		fqdn:          newFQDNState(),
		cidrRefs:      map[netip.Prefix]int{},
		cidrIDs:       map[netip.Prefix]identity.NumericIdentity{},
		namedPorts:    map[string]map[namedPortValue]int{},
		pendEndpoints: map[EndpointKey]bool{},
	}
	return r
}

// Allocator returns the identity allocator.
func (r *Repository) Allocator() *identity.Allocator { return r.alloc }

// SelectorIDs returns the ID of every live selector by its canonical key
// (opaque; persist it and pass it back as Options.SelectorIDs).
func (r *Repository) SelectorIDs() map[string]resolved.SelectorID {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sels.ids()
}

func policyKey(ref resolved.PolicyRef) string {
	return ref.Kind + "/" + ref.Namespace + "/" + ref.Name
}

// op is one validated mutation.
type op struct {
	order int // namespaces, services, pods, policies
	apply func()
}

// Upsert adds or replaces objects: *corev1.Namespace, *corev1.Pod,
// *corev1.Service, *networkingv1.NetworkPolicy, *api.CiliumNetworkPolicy,
// *api.CiliumClusterwideNetworkPolicy. All objects are validated first: on
// error nothing is applied. Endpoints affected by the whole batch are
// recomputed once.
func (r *Repository) Upsert(objs ...any) (Change, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ops []op
	newIPs := map[netip.Addr]EndpointKey{}
	for _, obj := range objs {
		if isNilObject(obj) {
			return Change{}, fmt.Errorf("upsert: nil %T", obj)
		}
		switch o := obj.(type) {
		case *corev1.Namespace:
			if o.Name == "" {
				return Change{}, fmt.Errorf("Namespace: metadata.name is empty")
			}
			name, labels := o.Name, o.Labels
			ops = append(ops, op{0, func() { r.setNamespace(name, labels) }})
		case *corev1.Service:
			if o.Name == "" {
				return Change{}, fmt.Errorf("Service: metadata.name is empty")
			}
			svc := o
			ops = append(ops, op{1, func() {
				r.services[EndpointKey{svc.Namespace, svc.Name}] = svc
				r.refreshServicePolicies()
			}})
		case *corev1.Pod:
			in, err := podFromObject(o)
			if err != nil {
				return Change{}, &ObjectError{Kind: "Pod", Namespace: o.Namespace, Name: o.Name, Err: err}
			}
			for _, ip := range in.ips {
				if other, ok := newIPs[ip]; ok && other != in.key {
					return Change{}, fmt.Errorf("Pod %s: status.podIP %s is also the address of pod %s", in.key, ip, other)
				}
				if other, ok := r.podIPs[ip]; ok && other != in.key {
					return Change{}, fmt.Errorf("Pod %s: status.podIP %s is also the address of pod %s", in.key, ip, other)
				}
				newIPs[ip] = in.key
			}
			ops = append(ops, op{2, func() { r.setPod(in) }})
		case *networkingv1.NetworkPolicy:
			cp, err := compileNetworkPolicy(o)
			if err != nil {
				return Change{}, &ObjectError{Kind: KindNetworkPolicy, Namespace: o.Namespace, Name: o.Name, Err: err}
			}
			ops = append(ops, op{3, func() { r.setPolicy(cp) }})
		case api.Policy:
			cp, err := compileCilium(o)
			if err != nil {
				return Change{}, &ObjectError{Kind: o.PolicyKind(), Namespace: o.Meta().Namespace, Name: o.Meta().Name, Err: err}
			}
			ops = append(ops, op{3, func() { r.setPolicy(cp) }})
		default:
			return Change{}, fmt.Errorf("unsupported object type %T", obj)
		}
	}
	sort.SliceStable(ops, func(i, j int) bool { return ops[i].order < ops[j].order })
	return r.run(ops), nil
}

func isNilObject(obj any) bool {
	switch o := obj.(type) {
	case nil:
		return true
	case *corev1.Namespace:
		return o == nil
	case *corev1.Service:
		return o == nil
	case *corev1.Pod:
		return o == nil
	case *networkingv1.NetworkPolicy:
		return o == nil
	case *api.CiliumNetworkPolicy:
		return o == nil
	case *api.CiliumClusterwideNetworkPolicy:
		return o == nil
	}
	return false
}

// Delete removes objects. Deleting a Namespace deletes its pods and
// namespaced policies. Unknown objects are an error and nothing is deleted.
func (r *Repository) Delete(refs ...ObjectRef) (Change, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ops []op
	for _, ref := range refs {
		ref := ref
		switch ref.Kind {
		case "Namespace":
			if _, ok := r.namespaces[ref.Name]; !ok {
				return Change{}, fmt.Errorf("delete %s: not found", ref)
			}
			ops = append(ops, op{0, func() { r.deleteNamespace(ref.Name) }})
		case "Service":
			k := EndpointKey{ref.Namespace, ref.Name}
			if _, ok := r.services[k]; !ok {
				return Change{}, fmt.Errorf("delete %s: not found", ref)
			}
			ops = append(ops, op{1, func() {
				delete(r.services, k)
				r.refreshServicePolicies()
			}})
		case "Pod":
			k := EndpointKey{ref.Namespace, ref.Name}
			if _, ok := r.endpoints[k]; !ok {
				return Change{}, fmt.Errorf("delete %s: not found", ref)
			}
			ops = append(ops, op{2, func() { r.deletePod(k) }})
		case KindNetworkPolicy, KindCNP, KindCCNP:
			pr := resolved.PolicyRef{Kind: ref.Kind, Namespace: ref.Namespace, Name: ref.Name}
			if ref.Kind == KindCCNP {
				pr.Namespace = ""
			}
			key := policyKey(pr)
			if _, ok := r.policies[key]; !ok {
				return Change{}, fmt.Errorf("delete %s: not found", ref)
			}
			ops = append(ops, op{3, func() { r.removePolicy(key) }})
		default:
			return Change{}, fmt.Errorf("delete %s: unsupported kind %q", ref, ref.Kind)
		}
	}
	return r.run(ops), nil
}

// run applies validated ops, recomputes the dirty endpoints and returns
// what changed.
func (r *Repository) run(ops []op) Change {
	r.dirty = map[EndpointKey]struct{}{}
	r.namedChanged = false
	r.namedIdents = map[identity.NumericIdentity]struct{}{}
	r.unusedIDs = map[identity.NumericIdentity]struct{}{}
	r.moved = map[EndpointKey]bool{}
	r.beginJournal()
	selChanged := map[resolved.SelectorID]struct{}{}
	saved := r.sels.changed
	r.sels.changed = selChanged
	ipcacheChanged := false
	r.pendIPCacheLocal = &ipcacheChanged
	for _, o := range ops {
		o.apply()
	}
	if r.namedChanged {
		for _, ip := range r.policies {
			r.syncNamedPeers(ip)
		}
		r.dirtyEgressNamedUsers()
	}
	r.refreshNamed(r.namedIdents)
	r.collectIdentities()
	r.revision++
	var ch Change
	ch.Revision = r.revision
	keys := make([]EndpointKey, 0, len(r.dirty))
	for k := range r.dirty {
		keys = append(keys, k)
	}
	sortKeys(keys)
	r.memo = map[string]*resolved.EndpointPolicy{}
	defer func() { r.memo = nil }()
	for _, k := range keys {
		ep, ok := r.endpoints[k]
		if !ok {
			ch.Removed = append(ch.Removed, k)
			r.pendEndpoints[k] = true
			continue
		}
		if r.recompute(ep) || r.moved[k] {
			ch.Endpoints = append(ch.Endpoints, k)
			r.pendEndpoints[k] = false
		}
	}
	for id := range selChanged {
		ch.Selectors = append(ch.Selectors, id)
		saved[id] = struct{}{}
	}
	r.sels.changed = saved
	sort.Slice(ch.Selectors, func(i, j int) bool { return ch.Selectors[i] < ch.Selectors[j] })
	ch.IPCache = ipcacheChanged
	r.pendIPCache = r.pendIPCache || ipcacheChanged
	r.pendIPCacheLocal = nil
	if ch.Empty() {
		r.revision-- // nothing happened: keep the revision
		ch.Revision = r.revision
	} else {
		r.endJournal(ch)
	}
	r.snap = nil
	return ch
}

func sortKeys(keys []EndpointKey) {
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].Namespace != keys[j].Namespace {
			return keys[i].Namespace < keys[j].Namespace
		}
		return keys[i].Name < keys[j].Name
	})
}

// Changes returns everything that changed since the previous call (for a
// consumer that polls rather than using each update's Change).
func (r *Repository) Changes() Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	ch := Change{Revision: r.revision, IPCache: r.pendIPCache}
	for k, removed := range r.pendEndpoints {
		if removed {
			ch.Removed = append(ch.Removed, k)
		} else {
			ch.Endpoints = append(ch.Endpoints, k)
		}
	}
	sortKeys(ch.Endpoints)
	sortKeys(ch.Removed)
	for id := range r.sels.changed {
		ch.Selectors = append(ch.Selectors, id)
	}
	sort.Slice(ch.Selectors, func(i, j int) bool { return ch.Selectors[i] < ch.Selectors[j] })
	r.pendEndpoints = map[EndpointKey]bool{}
	r.pendIPCache = false
	r.sels.changed = map[resolved.SelectorID]struct{}{}
	return ch
}

// Revision returns the current revision: it increases with every update
// that changed something.
func (r *Repository) Revision() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.revision
}

func (r *Repository) markIPCache() {
	r.ipcache = nil
	clear(r.ipPending)
	if r.pendIPCacheLocal != nil {
		*r.pendIPCacheLocal = true
	}
}

// allocate returns the identity of a label set, registering a new one with
// the selector cache.
func (r *Repository) allocate(ls identity.Labels) identity.NumericIdentity {
	id, created, err := r.alloc.Allocate(ls)
	if err != nil {
		// 16M identities: only reachable by a runaway producer. Fail
		// closed: the endpoint gets an identity that no selector names.
		return identity.Unknown
	}
	r.registerIdentity(id, ls, created)
	return id
}

func (r *Repository) registerIdentity(id identity.NumericIdentity, ls identity.Labels, created bool) {
	if _, known := r.idLabels[id]; known && !created {
		return
	}
	r.idLabels[id] = ls
	r.sels.addIdentity(id, ls)
}

func (r *Repository) nsLabels(ns string) map[string]string {
	return r.namespaces[ns]
}

func (r *Repository) setNamespace(name string, labels map[string]string) {
	cp := make(map[string]string, len(labels))
	for k, v := range labels {
		cp[k] = v
	}
	r.namespaces[name] = cp
	for k, ep := range r.endpoints {
		if k.Namespace == name {
			r.relabel(ep)
		}
	}
}

func (r *Repository) deleteNamespace(name string) {
	delete(r.namespaces, name)
	for k := range r.endpoints {
		if k.Namespace == name {
			r.deletePod(k)
		}
	}
	for key, ip := range r.policies {
		if ip.cp.ref.Kind != KindCCNP && ip.cp.ref.Namespace == name {
			r.removePolicy(key)
		}
	}
	removed := false
	for k := range r.services {
		if k.Namespace == name {
			delete(r.services, k)
			removed = true
		}
	}
	if removed {
		r.refreshServicePolicies()
	}
}

// relabel recomputes an endpoint's identity from its pod and namespace.
func (r *Repository) relabel(ep *Endpoint) {
	ls := identity.PodLabels(ep.podLabels, identity.PodContext{
		Namespace: ep.Key.Namespace, NamespaceLabels: r.nsLabels(ep.Key.Namespace), ServiceAccount: ep.serviceAccount,
	})
	id := r.allocate(ls)
	if id == ep.Identity && ep.Policy != nil {
		return
	}
	n := *ep
	n.Identity, n.Labels = id, ls
	r.moveIdentity(ep, &n)
	r.endpoints[ep.Key] = &n
	r.dirty[ep.Key] = struct{}{}
	if len(n.IPs) > 0 {
		r.markIPCache()
	}
}

func (r *Repository) moveIdentity(old, n *Endpoint) {
	if old != nil && hasNamedPort(old.Ports) {
		r.namedIdents[old.Identity] = struct{}{}
	}
	if n != nil && hasNamedPort(n.Ports) {
		r.namedIdents[n.Identity] = struct{}{}
	}
	if old != nil {
		if m := r.byIdentity[old.Identity]; m != nil {
			delete(m, old.Key)
			if len(m) == 0 {
				r.unusedIDs[old.Identity] = struct{}{}
				delete(r.byIdentity, old.Identity)
				delete(r.identRules, old.Identity)
				delete(r.idNS, old.Identity)
			}
		}
	}
	if n != nil {
		r.idNS[n.Identity] = n.Key.Namespace
		m := r.byIdentity[n.Identity]
		if m == nil {
			m = map[EndpointKey]struct{}{}
			r.byIdentity[n.Identity] = m
		}
		m[n.Key] = struct{}{}
	}
}

func (r *Repository) setPod(in podInput) {
	old := r.endpoints[in.key]
	ls := identity.PodLabels(in.labels, identity.PodContext{
		Namespace: in.key.Namespace, NamespaceLabels: r.nsLabels(in.key.Namespace), ServiceAccount: in.serviceAccount,
	})
	id := r.allocate(ls)
	n := &Endpoint{Key: in.key, IP: in.ip, IPs: in.ips, Identity: id, Labels: ls, Ports: in.ports, podLabels: in.labels, serviceAccount: in.serviceAccount}
	if old != nil {
		n.Policy, n.rules = old.Policy, old.rules
		for _, ip := range old.IPs {
			delete(r.podIPs, ip)
		}
		r.removeNamedPorts(old.Ports)
		sameAddrs := slices.Equal(old.IPs, in.ips)
		if old.Identity != id || !sameAddrs {
			r.markIPCache()
		}
		if !sameAddrs {
			r.moved[in.key] = true
		}
		r.moveIdentity(old, nil)
	} else if len(in.ips) > 0 {
		r.markIPCache()
	}
	for _, ip := range in.ips {
		r.podIPs[ip] = in.key
	}
	r.addNamedPorts(in.ports)
	r.moveIdentity(nil, n)
	r.endpoints[in.key] = n
	r.dirty[in.key] = struct{}{}
}

func (r *Repository) deletePod(k EndpointKey) {
	old, ok := r.endpoints[k]
	if !ok {
		return
	}
	for _, ip := range old.IPs {
		delete(r.podIPs, ip)
	}
	if len(old.IPs) > 0 {
		r.markIPCache()
	}
	r.removeNamedPorts(old.Ports)
	r.moveIdentity(old, nil)
	delete(r.endpoints, k)
	r.dirty[k] = struct{}{}
}

func (r *Repository) addNamedPorts(ports []NamedPort) {
	for _, p := range ports {
		if p.Name == "" {
			continue
		}
		m := r.namedPorts[p.Name]
		if m == nil {
			m = map[namedPortValue]int{}
			r.namedPorts[p.Name] = m
		}
		v := namedPortValue{p.Proto, p.Port}
		if m[v] == 0 {
			r.namedChanged = true
		}
		m[v]++
	}
}

func (r *Repository) removeNamedPorts(ports []NamedPort) {
	for _, p := range ports {
		if p.Name == "" {
			continue
		}
		m := r.namedPorts[p.Name]
		v := namedPortValue{p.Proto, p.Port}
		if m[v]--; m[v] <= 0 {
			delete(m, v)
			r.namedChanged = true
			if len(m) == 0 {
				delete(r.namedPorts, p.Name)
			}
		}
	}
}

// dirtyEgressNamedUsers marks the endpoints selected by policies whose
// egress rules name ports: their entries depend on every pod's ports.
func (r *Repository) dirtyEgressNamedUsers() {
	for _, ip := range r.policies {
		if !ip.cp.egressNamed {
			continue
		}
		for id, eps := range r.byIdentity {
			ls := r.idLabels[id]
			for _, rule := range ip.cp.rules {
				if rule.subject.Matches(ls) {
					for k := range eps {
						r.dirty[k] = struct{}{}
					}
					break
				}
			}
		}
	}
}

// setPolicy installs (or replaces) a compiled policy.
func (r *Repository) setPolicy(cp *compiledPolicy) {
	key := policyKey(cp.ref)
	old := r.policies[key]
	ip := &installedPolicy{cp: cp, key: key, selIDs: map[string]resolved.SelectorID{}}
	// CIDR identities first, so that the new selectors see them.
	for _, p := range cp.cidrs {
		r.acquireCIDR(p)
	}
	peers := cp.peers()
	if cp.usesServices {
		ip.servicePeers = r.resolveServices(cp)
		for _, extra := range ip.servicePeers {
			peers = append(peers, extra...)
		}
	}
	for _, peer := range peers {
		if _, ok := ip.selIDs[peer.key]; ok {
			continue
		}
		ip.selIDs[peer.key] = r.sels.acquire(peer, r.idLabels, r.fqdn)
	}
	r.syncNamedPeers(ip)
	r.policies[key] = ip
	r.indexPolicy(key, ip)
	if old != nil {
		r.releaseInstalled(old)
	}
	r.updateIdentRules(key, old, ip)
}

func (r *Repository) removePolicy(key string) {
	old, ok := r.policies[key]
	if !ok {
		return
	}
	delete(r.policies, key)
	r.indexPolicy(key, nil)
	r.releaseInstalled(old)
	r.updateIdentRules(key, old, nil)
}

func policyNS(ref resolved.PolicyRef) string {
	if ref.Kind == KindCCNP {
		return ""
	}
	return ref.Namespace
}

// indexPolicy sets (ip != nil) or removes the policy in policiesByNS.
func (r *Repository) indexPolicy(key string, ip *installedPolicy) {
	var ns string
	if ip != nil {
		ns = policyNS(ip.cp.ref)
	} else if old, ok := r.policies[key]; ok {
		ns = policyNS(old.cp.ref)
	} else {
		for n, m := range r.policiesByNS {
			if _, ok := m[key]; ok {
				ns = n
			}
		}
	}
	m := r.policiesByNS[ns]
	if ip == nil {
		delete(m, key)
		return
	}
	if m == nil {
		m = map[string]*installedPolicy{}
		r.policiesByNS[ns] = m
	}
	m[key] = ip
}

func (r *Repository) releaseInstalled(ip *installedPolicy) {
	for _, id := range ip.selIDs {
		r.sels.release(id)
	}
	for _, id := range ip.namedSelIDs {
		r.sels.release(id)
	}
	for _, p := range ip.cp.cidrs {
		r.releaseCIDR(p)
	}
}

func (r *Repository) acquireCIDR(p netip.Prefix) {
	r.cidrRefs[p]++
	if r.cidrRefs[p] > 1 {
		return
	}
	if p.Bits() == 0 {
		// The whole address space of a family is its world identity (as
		// in Cilium), which the ipcache always maps.
		r.cidrIDs[p] = identity.WorldFor(p.Addr())
		return
	}
	id, created, err := r.alloc.AllocateCIDR(p)
	if err != nil {
		// Local identity space exhausted: leave the prefix out of the
		// ipcache. Its addresses resolve to world, which a CIDR allow
		// selector of this prefix does not select unless it is /0.
		return
	}
	r.registerIdentity(id, identity.CIDRLabels(p), created)
	r.cidrIDs[p] = id
	r.markIPCache()
}

func (r *Repository) releaseCIDR(p netip.Prefix) {
	if r.cidrRefs[p]--; r.cidrRefs[p] > 0 {
		return
	}
	delete(r.cidrRefs, p)
	if id, ok := r.cidrIDs[p]; ok {
		r.unusedIDs[id] = struct{}{}
		delete(r.cidrIDs, p)
		r.markIPCache()
	}
}

// collectIdentities takes identities nothing uses any more out of selector
// membership (and out of the identities selectors are evaluated against).
// Their numbers stay allocated: the same label set gets the same identity
// when it comes back, and is then registered again.
func (r *Repository) collectIdentities() {
	if len(r.unusedIDs) == 0 {
		return
	}
	var local map[identity.NumericIdentity]bool
	for id := range r.unusedIDs {
		if id.IsReserved() {
			continue
		}
		if id.IsLocal() {
			if local == nil {
				local = map[identity.NumericIdentity]bool{}
				for _, lid := range r.cidrIDs {
					local[lid] = true
				}
				for _, lid := range r.fqdn.idOfIP {
					local[lid] = true
				}
			}
			if local[id] {
				continue
			}
		} else if len(r.byIdentity[id]) > 0 {
			continue
		}
		if _, ok := r.idLabels[id]; !ok {
			continue
		}
		delete(r.idLabels, id)
		delete(r.identRules, id)
		r.sels.removeIdentity(id)
	}
}

// updateIdentRules updates the cached rule lists of the identities in use
// for a replaced policy, and marks their endpoints dirty.
func (r *Repository) updateIdentRules(key string, old, n *installedPolicy) {
	ns := ""
	if old != nil {
		ns = policyNS(old.cp.ref)
	} else if n != nil {
		ns = policyNS(n.cp.ref)
	}
	for id, eps := range r.byIdentity {
		if ns != "" && r.idNS[id] != ns {
			continue
		}
		ls := r.idLabels[id]
		affected := false
		if old != nil {
			for _, rule := range old.cp.rules {
				if rule.subject.Matches(ls) {
					affected = true
					break
				}
			}
		}
		var add []*compiledRule
		if n != nil {
			for _, rule := range n.cp.rules {
				if rule.subject.Matches(ls) {
					add = append(add, rule)
				}
			}
		}
		if !affected && len(add) == 0 {
			continue
		}
		if cached, ok := r.identRules[id]; ok {
			kept := make([]*compiledRule, 0, len(cached)+len(add))
			for _, rule := range cached {
				if policyKey(rule.policy) != key {
					kept = append(kept, rule)
				}
			}
			kept = append(kept, add...)
			sortRules(kept)
			r.identRules[id] = kept
		}
		for k := range eps {
			r.dirty[k] = struct{}{}
		}
	}
}

func sortRules(rules []*compiledRule) {
	sort.SliceStable(rules, func(i, j int) bool {
		a, b := policyKey(rules[i].policy), policyKey(rules[j].policy)
		if a != b {
			return a < b
		}
		return rules[i].index < rules[j].index
	})
}

// rulesFor returns the rules selecting an identity, in policy order.
func (r *Repository) rulesFor(id identity.NumericIdentity) []*compiledRule {
	if rules, ok := r.identRules[id]; ok {
		return rules
	}
	ls := r.idLabels[id]
	var rules []*compiledRule
	for _, ns := range []string{"", r.idNS[id]} {
		for _, ip := range r.policiesByNS[ns] {
			for _, rule := range ip.cp.rules {
				if rule.subject.Matches(ls) {
					rules = append(rules, rule)
				}
			}
		}
		if r.idNS[id] == "" {
			break
		}
	}
	sortRules(rules)
	r.identRules[id] = rules
	return rules
}

func hasNamedPort(ports []NamedPort) bool {
	for _, p := range ports {
		if p.Name != "" {
			return true
		}
	}
	return false
}
