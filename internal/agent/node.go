package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bulwark-net/bulwark/internal/datapath"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/sandbox"
	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
)

// node is the agent's hold on the machine: the datapath, the sandbox node
// and the policy repository, and what the agent knows of each endpoint.
//
// Locking: the agent's mu serialises every change (so node methods that
// change things run one at a time); n.mu guards the fields the read-only
// views use, so status answers while a change is in progress.
type node struct {
	log       *slog.Logger
	paths     Paths
	dp        *datapath.Datapath
	sb        *sandbox.Node
	repo      *policy.Repository
	ids       *endpointIDs
	nodeNetns string // where the host-side veths live
	kubeNode  string // Kubernetes mode: the Node's name (flows carry it)
	nodeIP    netip.Addr
	// remoteNodes are the other nodes' addresses (Kubernetes mode),
	// sorted; replaced, never modified in place.
	remoteNodes []netip.Addr
	events      *eventPump
	views       eventViews // what the observer resolves events with; see publishEventView
	fqdn        *fqdnLearner
	fqdnStop    func()     // stops the FQDN expiry loop (it saves the cache)
	l7          *l7Proxies // nil when the proxies could not start: redirects drop
	// syncMu orders datapath syncs: the snapshot each pushes, and
	// syncedRev, only move forward. Apart from the agent's change lock,
	// so that the DNS proxy's FQDN syncs never wait for a whole change.
	syncMu sync.Mutex
	// fqdnIncremental counts FQDN syncs done incrementally (pushFQDN).
	fqdnIncremental atomic.Int64
	// ipcacheHint is the size of the last ipcache pushed.
	ipcacheHint atomic.Int64
	pushed      dpPushed // what the last push gave the datapath (syncMu)
	rl          rateLimits

	mu        sync.Mutex
	snap      *policy.Snapshot          // last snapshot pushed into the datapath
	attached  map[uint32]string         // endpoint ID → pod key, attached by us (or adopted)
	loaded    map[uint32]bool           // endpoints that had a policy in the last successful sync
	syncedRev uint64                    // repository revision of the last successful sync
	inRepo    map[policy.ObjectRef]bool // objects (not pods) upserted into the repository
	problems  map[string]string         // desired pod key → why it does not run
	desired   map[string]bool           // desired pod keys (DNS pod included)
	lastSet   *manifest.Set             // desired objects of the last reconcile
	rlSet     *manifest.Set             // desired objects of the current reconcile (rate limits)
	// What the last successful sync gave the datapath: the snapshot's
	// policies with rate-limited ports redirected, and its selectors.
	dpPolicies  map[uint32]*resolved.EndpointPolicy
	dpSelectors resolved.SelectorSet
	dpLimits    rlTargets
	policies    int

	identityGrace time.Duration                     // see collectIdentities
	inUse         map[identity.NumericIdentity]bool // the identities the last sync used
}

func (n *node) identitiesFile() string { return filepath.Join(n.paths.StateDir, "identities.json") }
func (n *node) selectorsFile() string  { return filepath.Join(n.paths.StateDir, "selectors.json") }

// openNode opens the datapath (adopting pins), fills the policy repository
// from the persisted desired state and the pods that already exist, then
// opens the sandbox node (whose cluster DNS pod, when new, goes through the
// same fail-closed path as every pod).
func openNode(ctx context.Context, a *Agent) (*node, error) {
	p := a.opts.Paths
	n := &node{
		log: a.log, paths: p,
		attached: map[uint32]string{}, loaded: map[uint32]bool{},
		inRepo: map[policy.ObjectRef]bool{}, problems: map[string]string{}, desired: map[string]bool{},
		nodeNetns:     netns.Path(sandbox.NodeNetns(p.Instance)),
		identityGrace: defaultIdentityGrace,
	}
	alloc := identity.NewAllocator()
	if err := restoreIdentities(n.identitiesFile(), alloc); err != nil {
		// Not fatal: identities are renumbered; Sync swaps them without
		// a gap, and connections revalidate against the new tables.
		n.log.Warn("identities not restored", "err", err)
		alloc = identity.NewAllocator()
	}
	selIDs, err := restoreSelectorIDs(n.selectorsFile())
	if err != nil {
		// Not fatal either: selector IDs are derived from the selectors.
		n.log.Warn("selector IDs not restored", "err", err)
	}
	// Restored identities and selector IDs make the repository compute
	// the tables the datapath already holds: the first Sync of a
	// restarted agent changes nothing.
	n.repo = policy.NewRepository(policy.Options{Allocator: alloc, SelectorIDs: selIDs})
	if n.ids, err = openEndpointIDs(filepath.Join(p.StateDir, "endpoints.json")); err != nil {
		return nil, err
	}
	cfg, err := wantedSandboxConfig(p, a.opts)
	if err != nil {
		return nil, err
	}
	if n.dp, err = datapath.Open(datapath.Options{PinDir: datapathPinDir(p), DisableLocalDelivery: cfg.NoLocalDelivery}); err != nil {
		return nil, fmt.Errorf("open datapath: %w", err)
	}
	fail := func(err error) (*node, error) {
		if n.sb != nil {
			n.sb.Close()
		}
		n.dp.Close()
		return nil, err
	}
	// The repository must know every existing pod and policy before the
	// first Sync: a partial first Sync would unload adopted endpoints.
	if err := n.loadBase(a.store.set()); err != nil {
		n.log.Error("persisted objects do not resolve", "err", err)
	}
	if st, err := sandbox.ReadState(p.RunRoot, p.Instance); err == nil {
		for _, pod := range st.Pods {
			if _, err := n.repo.Upsert(podObject(pod)); err != nil {
				n.log.Error("adopt pod", "pod", pod.Key(), "err", err)
				continue
			}
			// Counted as attached from the start: any Sync before the
			// first reconcile (a DNS pod rebuilt inside sandbox.New) must
			// keep their policies loaded.
			if id, ok := n.ids.lookup(pod.Key()); ok {
				n.attached[id] = pod.Key()
			}
		}
	}
	// What pods learned through the DNS proxy is enforced again before
	// the first Sync (sandbox.New may sync for a rebuilt DNS pod).
	n.fqdn = newFQDNLearner(n, a.opts.FQDN)
	sb, err := sandbox.New(sandbox.Options{
		Instance:  p.Instance,
		StateRoot: p.RunRoot,
		BPFFSRoot: p.PinRoot,
		IPv6:      cfg.IPv6,
		BeforeUp:  n.beforeUp,
	})
	if err != nil {
		return fail(fmt.Errorf("open sandbox: %w", err))
	}
	n.sb = sb
	if err := applyWorld(sb, cfg.World); err != nil {
		return fail(err)
	}
	if err := writeSandboxConfig(p, cfg); err != nil {
		return fail(err)
	}
	if a.opts.IdentityGrace > 0 {
		n.identityGrace = a.opts.IdentityGrace
	}
	n.nodeIP = sb.State().NodeIP
	n.events = startEventPump(ctx, n, a.listeners)
	n.fqdnStop = n.fqdn.start(ctx)
	lo := l7Options{NodeNetns: n.nodeNetns, Record: n.recordL7, Learn: n.fqdn.Learn}
	lo.DNSDeniedRcode, _ = dnsRejectRcode(cfg.DNSReject) // checked by wantedSandboxConfig
	if n.events.metrics != nil {
		lo.Registerer = n.events.metrics.Registry()
	}
	if n.l7, err = startL7(n.log, lo); err != nil {
		// Not fatal: without a proxy every redirect drops (rule zero).
		n.log.Error("L7 proxy not started: L7 rules drop their traffic", "err", err)
		n.events.errors = append(n.events.errors, "L7 proxy: "+err.Error())
		n.l7 = nil
	}
	n.publishEventView()
	return n, nil
}

// datapathPinDir keeps the datapath's pins beside the sandbox's own
// (socklb) under the instance's bpffs directory.
func datapathPinDir(p Paths) string { return filepath.Join(p.PinDir, "datapath") }

func (n *node) close() {
	n.l7.close()
	if n.fqdnStop != nil {
		n.fqdnStop()
	}
	if n.events != nil {
		n.events.stop()
	}
	if n.sb != nil {
		n.sb.Close()
	}
	n.dp.Close()
}

// destroy removes everything of the instance: pods, namespaces, the
// datapath's programs and pins, the state.
func (n *node) destroy() error {
	n.l7.close()
	if n.fqdnStop != nil {
		n.fqdnStop()
	}
	if n.events != nil {
		n.events.stop()
	}
	var errs []error
	if err := n.dp.Destroy(); err != nil {
		errs = append(errs, fmt.Errorf("destroy datapath: %w", err))
	}
	if err := n.sb.Teardown(); err != nil {
		errs = append(errs, fmt.Errorf("tear down sandbox: %w", err))
	}
	if err := os.RemoveAll(n.paths.StateDir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// revision is the datapath's policy revision.
func (n *node) revision() uint64 { return n.dp.Revision() }

// podObject is the Pod the policy repository sees for a sandbox pod, with
// all its labels: identity.PodLabels leaves out those that are not
// identity-relevant (pod-template-hash, ...).
func podObject(p sandbox.PodInfo) *corev1.Pod {
	labels := copyLabels(p.Labels)
	pod := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: labels},
	}
	c := corev1.Container{Name: "main"}
	for _, cp := range p.Ports {
		c.Ports = append(c.Ports, corev1.ContainerPort{Name: cp.Name, ContainerPort: int32(cp.Port), Protocol: corev1.Protocol(cp.Protocol)})
	}
	pod.Spec.Containers = []corev1.Container{c}
	for i, ip := range p.IPs {
		if i == 0 {
			pod.Status.PodIP = ip.String()
		}
		pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: ip.String()})
	}
	return pod
}

// baseObjects are the repository inputs other than pods: namespaces,
// services and policies.
func baseObjects(set *manifest.Set) (objs []any, refs map[policy.ObjectRef]bool) {
	refs = map[policy.ObjectRef]bool{}
	add := func(kind, ns, name string, o any) {
		objs = append(objs, o)
		refs[policy.ObjectRef{Kind: kind, Namespace: ns, Name: name}] = true
	}
	for _, o := range set.Namespaces {
		add("Namespace", "", o.Name, o)
	}
	for _, o := range set.Services {
		add("Service", o.Namespace, o.Name, o)
	}
	for _, o := range set.NetworkPolicies {
		add(policy.KindNetworkPolicy, o.Namespace, o.Name, o)
	}
	for _, o := range set.CNPs {
		add(policy.KindCNP, o.Namespace, o.Name, o)
	}
	for _, o := range set.CCNPs {
		add(policy.KindCCNP, "", o.Name, o)
	}
	return objs, refs
}

// loadBase makes the repository's namespaces, services and policies those
// of set.
func (n *node) loadBase(set *manifest.Set) error {
	objs, refs := baseObjects(set)
	if len(objs) > 0 {
		if _, err := n.repo.Upsert(objs...); err != nil {
			return err
		}
	}
	var gone []policy.ObjectRef
	n.mu.Lock()
	for r := range n.inRepo {
		if !refs[r] {
			gone = append(gone, r)
		}
	}
	n.mu.Unlock()
	sort.Slice(gone, func(i, j int) bool { return gone[i].String() < gone[j].String() })
	for _, r := range gone {
		// Deleting a namespace would take its pods out of the repository
		// while they still run: only pods leave through removePod.
		if r.Kind == "Namespace" {
			if _, err := n.repo.Upsert(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: r.Name}}); err != nil {
				return err
			}
			continue
		}
		if _, err := n.repo.Delete(r); err != nil {
			return err
		}
	}
	n.mu.Lock()
	n.inRepo = refs
	n.policies = len(set.NetworkPolicies) + len(set.CNPs) + len(set.CCNPs)
	n.mu.Unlock()
	return nil
}

// desiredPodSpecs computes the sandbox pods of set, with the cluster DNS
// pod. Objects that cannot run in the sandbox are reported per object.
func desiredPodSpecs(set *manifest.Set) ([]sandbox.PodSpec, []error) {
	var specs []sandbox.PodSpec
	var errs []error
	for _, p := range set.Pods {
		s, err := sandbox.PodSpecFromPod(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		specs = append(specs, s)
	}
	for _, d := range set.Deployments {
		s, err := sandbox.PodsForDeployment(d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		specs = append(specs, s...)
	}
	for _, o := range set.StatefulSets {
		errs = append(errs, fmt.Errorf("StatefulSet %s/%s: the sandbox runs Pods and Deployments only", o.Namespace, o.Name))
	}
	for _, o := range set.DaemonSets {
		errs = append(errs, fmt.Errorf("DaemonSet %s/%s: the sandbox runs Pods and Deployments only", o.Namespace, o.Name))
	}
	for _, o := range set.ReplicaSets {
		errs = append(errs, fmt.Errorf("ReplicaSet %s/%s: the sandbox runs Pods and Deployments only", o.Namespace, o.Name))
	}
	seen := map[string]bool{}
	for _, s := range specs {
		k := s.Namespace + "/" + s.Name
		if seen[k] {
			errs = append(errs, fmt.Errorf("pod %s is defined twice", k))
		}
		seen[k] = true
	}
	return specs, errs
}

func serviceSpecs(set *manifest.Set) ([]sandbox.ServiceSpec, error) {
	var out []sandbox.ServiceSpec
	for _, s := range set.Services {
		spec, err := sandbox.ServiceSpecFromService(s)
		if err != nil {
			return nil, err
		}
		out = append(out, spec)
	}
	return out, nil
}

// check resolves set in a throw-away repository: what apply runs before
// committing, so a set the engine or the sandbox cannot take is refused
// whole.
func (n *node) check(set *manifest.Set) error {
	specs, errs := desiredPodSpecs(set)
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if _, err := serviceSpecs(set); err != nil {
		return err
	}
	objs, _ := baseObjects(set)
	for _, s := range specs {
		objs = append(objs, podObject(sandbox.PodInfo{Namespace: s.Namespace, Name: s.Name, Labels: s.Labels, Ports: s.Ports}))
	}
	if _, err := policy.NewRepository(policy.Options{}).Upsert(objs...); err != nil {
		return err
	}
	return nil
}

func podKey(ns, name string) string { return ns + "/" + name }

func endpointKeyOf(ns, name string) policy.EndpointKey {
	return policy.EndpointKey{Namespace: ns, Name: name}
}

func endpointKey(p sandbox.PodInfo) policy.EndpointKey {
	return policy.EndpointKey{Namespace: p.Namespace, Name: p.Name}
}

// beforeUp runs inside sandbox.AddPod for a new pod as its BeforeUp
// hook, while the node side of its veth is still down and unrouted: the
// endpoint is attached not ready (drop all), then the datapath loads its
// policy. Only then may the link come up and the workload start. On error everything done here is undone and the sandbox
// removes the pod.
func (n *node) beforeUp(p sandbox.PodInfo) (err error) {
	key := p.Key()
	id, err := n.ids.assign(key)
	if err != nil {
		return err
	}
	if _, err := n.repo.Upsert(podObject(p)); err != nil {
		n.ids.release(key)
		return fmt.Errorf("resolve policy: %w", err)
	}
	defer func() {
		if err != nil {
			n.dp.DetachEndpoint(id)
			n.repo.Delete(policy.ObjectRef{Kind: "Pod", Namespace: p.Namespace, Name: p.Name})
			n.mu.Lock()
			delete(n.attached, id)
			n.mu.Unlock()
			n.ids.release(key)
			n.publishEventView()
		}
	}()
	snap := n.repo.Snapshot()
	ep := snap.Endpoints[endpointKey(p)]
	if ep == nil {
		return fmt.Errorf("pod %s missing from the policy repository", key)
	}
	dep := datapath.Endpoint{ID: id, IfIndex: p.HostIfIndex, NetNSPath: n.nodeNetns, Identity: ep.Identity}
	if err := n.dp.AttachEndpoint(dep); err != nil {
		// The pod's network is new, so a record under its ID is stale (a
		// pod rebuilt after its namespace vanished): drop it and retry.
		n.log.Warn("replacing stale endpoint", "pod", key, "endpoint", id, "err", err)
		if derr := n.dp.DetachEndpoint(id); derr != nil {
			n.log.Warn("detach stale endpoint", "endpoint", id, "err", derr)
		}
		if err := n.dp.AttachEndpoint(dep); err != nil {
			return err
		}
	}
	n.mu.Lock()
	n.attached[id] = key
	n.mu.Unlock()
	if err := n.syncDatapath(); err != nil {
		return err
	}
	n.log.Info("endpoint enforcing", "pod", key, "endpoint", id, "identity", ep.Identity)
	return nil
}

// syncDatapath pushes the repository's current state into the datapath for
// every attached endpoint and persists the numbering. Whatever the
// outcome, the observer's view is then republished: callers change
// attachments just before syncing.
func (n *node) syncDatapath() error {
	if err := n.syncTables(); err != nil {
		return err
	}
	// Identities are collected here, off the FQDN path: an address
	// learned meanwhile is safe, as allocating it again restarts its
	// grace period.
	n.mu.Lock()
	snap := n.snap
	n.mu.Unlock()
	n.collectIdentities(snap)
	n.persistNumbering()
	return nil
}

// syncedRevision is the repository revision the datapath holds.
func (n *node) syncedRevision() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.syncedRev
}

// syncTables is syncDatapath without persisting the numbering (the FQDN
// path persists it in the background).
func (n *node) syncTables() error {
	defer n.publishEventView()
	return n.loadTables()
}

// loadTables is syncTables without republishing the observer's view (the
// FQDN path republishes it after releasing the answer).
func (n *node) loadTables() error {
	n.syncMu.Lock()
	defer n.syncMu.Unlock()
	return n.loadTablesLocked()
}

// syncAtLeast loads the tables unless the datapath already holds
// repository revision rev or newer (a sync that ran meanwhile took it
// along); synced says whether it loaded.
func (n *node) syncAtLeast(rev uint64) (synced bool, err error) {
	n.syncMu.Lock()
	defer n.syncMu.Unlock()
	if n.syncedRevision() >= rev {
		return false, nil
	}
	switch done, err := n.pushFQDN(); {
	case done:
		n.publishL7View()
		return true, nil
	case err != nil:
		// The datapath forgot its state: the full sync rewrites it.
		n.log.Warn("incremental FQDN update failed, syncing fully", "err", err)
	}
	return true, n.loadTablesLocked()
}

// loadTablesLocked pushes the current snapshot; syncMu held. On success
// the L7 proxies see the synced state before syncMu is released, so that
// whoever finds its revision synced (syncAtLeast) also finds it there:
// a learned address's identity is known to the proxies before its DNS
// answer is released.
func (n *node) loadTablesLocked() error {
	if err := n.pushTables(); err != nil {
		return err
	}
	n.publishL7View()
	return nil
}

// pushTables is loadTablesLocked without publishing.
func (n *node) pushTables() error {
	snap := n.repo.Snapshot()
	n.mu.Lock()
	eps := map[uint32]*resolved.EndpointPolicy{}
	for id, key := range n.attached {
		ns, name := splitKey(key)
		if ep := snap.Endpoints[policy.EndpointKey{Namespace: ns, Name: name}]; ep != nil && ep.Policy != nil {
			eps[id] = ep.Policy
		}
	}
	n.mu.Unlock()
	ipc, ipcChanged := n.datapathIPCache(snap)
	// CiliumEnvoyConfig rate limits: their backends' ports go to the proxy.
	n.mu.Lock()
	rlSet := n.rlSet
	n.mu.Unlock()
	var sels resolved.SelectorSet = snap.Selectors
	limits := n.rl.targets(rlSet, snap, func(what string, err error) { n.log.Error("rate limit not enforced", "config", what, "err", err) })
	if len(limits) > 0 {
		var all []identity.NumericIdentity
		for id := range n.repo.Allocator().All() {
			all = append(all, id)
		}
		slices.Sort(all)
		sels = rlSelectors{SelectorSet: snap.Selectors, all: all}
		n.mu.Lock()
		for id, key := range n.attached {
			ns, name := splitKey(key)
			if ports := limits[policy.EndpointKey{Namespace: ns, Name: name}]; len(ports) > 0 && eps[id] != nil {
				eps[id] = withRateLimitRedirects(eps[id], ports)
			}
		}
		n.mu.Unlock()
	}
	st := datapath.State{Endpoints: eps, Selectors: sels, IPCache: ipc, Revision: snap.Revision,
		ProxyPort: n.l7.proxyPort}
	ports := proxyPorts(n.l7)
	n.mu.Lock()
	ch := datapathChanges(n.dpPolicies, eps, ports != n.pushed.ports, ipcChanged)
	n.mu.Unlock()
	if err := n.dp.SyncChanges(st, ch); err != nil {
		n.pushed = dpPushed{} // rebuilt next time (the datapath itself syncs fully after a failed write)
		return fmt.Errorf("load datapath: %w", err)
	}
	n.pushed = dpPushed{ipcSrc: snap.IPCache, nodeIP: n.nodeIP, remoteNodes: n.remoteNodes, ipc: ipc, ports: ports}
	n.addRules(n.dp.Compiled())
	n.mu.Lock()
	n.snap = snap
	n.dpPolicies, n.dpSelectors, n.dpLimits = eps, sels, limits
	n.syncedRev = snap.Revision
	n.loaded = map[uint32]bool{}
	for id := range eps {
		n.loaded[id] = true
	}
	n.mu.Unlock()
	return nil
}

// persistNumbering saves the identities and selector IDs the datapath now
// holds, for the next agent to restore. A failure only costs that agent
// one rewrite of its tables, so it is logged, not returned.
func (n *node) persistNumbering() {
	if err := saveIdentities(n.identitiesFile(), n.repo.Allocator()); err != nil {
		n.log.Warn("identities not persisted", "err", err)
	}
	if err := saveSelectorIDs(n.selectorsFile(), n.repo.SelectorIDs()); err != nil {
		n.log.Warn("selector IDs not persisted", "err", err)
	}
}

func splitKey(k string) (string, string) {
	if ns, name, ok := strings.Cut(k, "/"); ok {
		return ns, name
	}
	return "", k
}

// removePod takes a pod out in the order that never lets its address be
// mistaken for another: policy and ipcache first, then the programs, then
// the pod itself.
func (n *node) removePod(p sandbox.PodInfo) error {
	key := p.Key()
	defer n.publishEventView() // the attachment and endpoint ID go
	if id, ok := n.ids.lookup(key); ok && n.fqdn != nil {
		n.fqdn.forgetEndpoint(id) // the sync below takes it along
	}
	if _, err := n.repo.Delete(policy.ObjectRef{Kind: "Pod", Namespace: p.Namespace, Name: p.Name}); err != nil {
		n.log.Debug("pod not in repository", "pod", key, "err", err)
	}
	if err := n.syncDatapath(); err != nil {
		return err
	}
	if id, ok := n.ids.lookup(key); ok {
		if err := n.dp.DetachEndpoint(id); err != nil {
			return fmt.Errorf("detach endpoint %d: %w", id, err)
		}
		n.mu.Lock()
		delete(n.attached, id)
		n.mu.Unlock()
	}
	if err := n.sb.RemovePod(p.Namespace, p.Name); err != nil {
		return err
	}
	n.log.Info("pod removed", "pod", key)
	return n.ids.release(key)
}

// reconcile converges the machine to set.
func (n *node) reconcile(set *manifest.Set) error {
	n.mu.Lock()
	n.rlSet = set
	n.mu.Unlock()
	start := time.Now()
	defer func() { n.log.Debug("reconciled", "took", time.Since(start), "revision", n.dp.Revision()) }()
	var errs []error
	if err := n.loadBase(set); err != nil {
		return fmt.Errorf("policy repository: %w", err)
	}
	specs, specErrs := desiredPodSpecs(set)
	errs = append(errs, specErrs...)
	want := map[string]sandbox.PodSpec{}
	for _, s := range specs {
		want[podKey(s.Namespace, s.Name)] = s
	}
	// 1. Pods that should not exist.
	for _, p := range n.sb.Pods() {
		if p.Role == sandbox.RoleDNS {
			continue
		}
		if _, ok := want[p.Key()]; !ok {
			if err := n.removePod(p); err != nil {
				errs = append(errs, fmt.Errorf("remove pod %s: %w", p.Key(), err))
			}
		}
	}
	// 2. Pods to create or update (a new one goes through beforeUp).
	problems := map[string]string{}
	desired := map[string]bool{}
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	current := map[string]sandbox.PodInfo{}
	for _, p := range n.sb.Pods() {
		current[p.Key()] = p
	}
	for _, k := range keys {
		desired[k] = true
		if cur, ok := current[k]; ok && upToDate(cur, want[k]) {
			continue
		}
		if _, err := n.sb.AddPod(want[k]); err != nil {
			problems[k] = err.Error()
			errs = append(errs, err)
		}
	}
	// 3. Every pod (adopted, updated, DNS): known to the repository with
	// its current labels and address, and attached. Endpoints of pods that
	// no longer exist are forgotten (and detached below).
	pods := n.sb.Pods()
	exists := map[string]bool{}
	for _, p := range pods {
		exists[p.Key()] = true
	}
	n.mu.Lock()
	for id, key := range n.attached {
		if !exists[key] {
			delete(n.attached, id)
		}
	}
	n.mu.Unlock()
	for _, k := range n.repo.Snapshot().EndpointKeys() {
		if !exists[k.String()] {
			if _, err := n.repo.Delete(policy.ObjectRef{Kind: "Pod", Namespace: k.Namespace, Name: k.Name}); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, p := range pods {
		if p.Role == sandbox.RoleDNS {
			desired[p.Key()] = true
		}
		if _, err := n.repo.Upsert(podObject(p)); err != nil {
			problems[p.Key()] = err.Error()
			errs = append(errs, err)
			continue
		}
		if err := n.ensureAttached(p); err != nil {
			problems[p.Key()] = err.Error()
			errs = append(errs, err)
		}
	}
	if err := n.syncDatapath(); err != nil {
		errs = append(errs, err)
	}
	// Endpoints the datapath holds for no existing pod (adopted pins of a
	// pod that vanished): they only drop; take them out.
	errs = append(errs, n.detachStale()...)
	// 4. Services (backends follow pods inside the sandbox).
	if svcs, err := serviceSpecs(set); err != nil {
		errs = append(errs, err)
	} else if _, err := n.sb.SetServices(svcs); err != nil {
		errs = append(errs, fmt.Errorf("services: %w", err))
	}
	n.mu.Lock()
	n.problems, n.desired, n.lastSet = problems, desired, set
	n.mu.Unlock()
	return errors.Join(errs...)
}

// ensureAttached attaches an existing pod's endpoint (a no-op for one the
// datapath already has, also from a previous agent).
func (n *node) ensureAttached(p sandbox.PodInfo) error {
	id, err := n.ids.assign(p.Key())
	if err != nil {
		return err
	}
	ep := n.repo.Snapshot().Endpoints[endpointKey(p)]
	if ep == nil {
		return fmt.Errorf("pod %s missing from the policy repository", p.Key())
	}
	if err := n.dp.AttachEndpoint(datapath.Endpoint{ID: id, IfIndex: p.HostIfIndex, NetNSPath: n.nodeNetns, Identity: ep.Identity}); err != nil {
		return err
	}
	n.mu.Lock()
	n.attached[id] = p.Key()
	n.mu.Unlock()
	return nil
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }

func copyLabels(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// detachStale detaches datapath endpoints that belong to no pod we know.
func (n *node) detachStale() []error {
	n.mu.Lock()
	known := make(map[uint32]bool, len(n.attached))
	for id := range n.attached {
		known[id] = true
	}
	n.mu.Unlock()
	var errs []error
	for _, ep := range n.dp.Endpoints() {
		if known[ep.ID] {
			continue
		}
		n.log.Info("detaching stale endpoint", "endpoint", ep.ID, "ifindex", ep.IfIndex)
		if err := n.dp.DetachEndpoint(ep.ID); err != nil {
			errs = append(errs, fmt.Errorf("detach stale endpoint %d: %w", ep.ID, err))
		}
	}
	return errs
}

// upToDate reports whether an existing pod already matches its spec and
// runs: AddPod would change nothing.
func upToDate(cur sandbox.PodInfo, spec sandbox.PodSpec) bool {
	role := spec.Role
	if role == "" {
		role = sandbox.RoleWorkload
	}
	return cur.Running() && cur.Role == role && cur.OwnerDeployment == spec.OwnerDeployment &&
		reflect.DeepEqual(cur.Labels, spec.Labels) && reflect.DeepEqual(cur.Ports, spec.Ports)
}
