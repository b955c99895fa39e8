// Package source is the Kubernetes source of an agent's state: client-go
// shared informers over Pods, Namespaces, Services, EndpointSlices, Nodes,
// NetworkPolicies and the cilium.io/v2 CiliumNetworkPolicies and
// CiliumClusterwideNetworkPolicies, turned into the same objects the
// sandbox's manifest loader produces (a manifest.Set of typed objects), so
// that one policy engine, datapath and observer serve both. The Cilium
// policies go through manifest.DecodeWith, exactly as a YAML file given to
// the sandbox does: a policy the decoder refuses is reported with the
// reason (State.Errors) and left out, and the rest still apply.
//
// Informer events are coalesced: Changes signals at most once per batch, a
// reader then takes one consistent State from the listers.
package source

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/policy/api"
)

// The cilium.io/v2 policy resources.
var (
	CNPResource  = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	CCNPResource = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"}
)

// SourceFile is the manifest.Source file name of objects read from the API
// server (errors print as "kubernetes:doc 0: Kind ns/name: field: reason").
const SourceFile = "kubernetes"

// Options configure New.
type Options struct {
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	// NodeName is this node (State.NodePods).
	NodeName string
	// Batch is how long Changes waits after the first event for more
	// before it signals (0: 10ms).
	Batch time.Duration
	Log   *slog.Logger
}

// PolicyError is a policy object that does not decode (or, reported by the
// agent, does not resolve). It is not enforced; what was enforced before
// stays.
type PolicyError struct {
	Kind, Namespace, Name string
	UID                   types.UID
	Err                   error
}

func (e PolicyError) Error() string {
	return manifest.ObjectString(e.Kind, e.Namespace, e.Name) + ": " + e.Err.Error()
}

// State is one consistent view of the cluster.
type State struct {
	// Objects holds the namespaces, services and policies (NetworkPolicy,
	// CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy) that decoded.
	Objects *manifest.Set
	// Versions is each object's version, by manifest key (Kind ns/name),
	// for callers that apply only what changed: the generation of
	// policies (a status write does not change it; the agents' own status
	// writes must not make them apply the policy again), the
	// resourceVersion of the rest.
	Versions map[string]string
	// Pods are every pod of the cluster that has or may get an address of
	// its own (not hostNetwork, not finished).
	Pods []*corev1.Pod
	// Nodes are the cluster's nodes; EndpointSlices the services'
	// backends.
	Nodes          []*corev1.Node
	EndpointSlices []*discoveryv1.EndpointSlice
	// Errors lists the policies that did not decode, in a stable order.
	Errors []PolicyError
}

// Key is the key of an object in State.Versions.
func Key(kind, ns, name string) string { return manifest.ObjectString(kind, ns, name) }

// NodePods returns the pods scheduled to node.
func (s *State) NodePods(node string) []*corev1.Pod {
	var out []*corev1.Pod
	for _, p := range s.Pods {
		if p.Spec.NodeName == node {
			out = append(out, p)
		}
	}
	return out
}

// Source watches the API server.
type Source struct {
	opts    Options
	log     *slog.Logger
	factory informers.SharedInformerFactory
	dyn     dynamicinformer.DynamicSharedInformerFactory
	synced  []cache.InformerSynced

	pods   cache.SharedIndexInformer
	nss    cache.SharedIndexInformer
	svcs   cache.SharedIndexInformer
	eps    cache.SharedIndexInformer
	nodes  cache.SharedIndexInformer
	nps    cache.SharedIndexInformer
	cnps   cache.SharedIndexInformer
	ccnps  cache.SharedIndexInformer
	notify chan struct{}

	mu      sync.Mutex
	decoded map[string]decodedPolicy // Cilium policies by UID, at a resourceVersion
	isSync  bool
}

type decodedPolicy struct {
	rv  string
	obj *manifest.Object
	err error
}

// New creates the informers; Start runs them.
func New(opts Options) (*Source, error) {
	if opts.Client == nil || opts.Dynamic == nil {
		return nil, errors.New("source: Client and Dynamic are required")
	}
	if opts.Batch <= 0 {
		opts.Batch = 10 * time.Millisecond
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Source{opts: opts, log: log, notify: make(chan struct{}, 1), decoded: map[string]decodedPolicy{}}
	s.factory = informers.NewSharedInformerFactory(opts.Client, 0)
	s.dyn = dynamicinformer.NewDynamicSharedInformerFactory(opts.Dynamic, 0)
	s.pods = s.factory.Core().V1().Pods().Informer()
	s.nss = s.factory.Core().V1().Namespaces().Informer()
	s.svcs = s.factory.Core().V1().Services().Informer()
	s.eps = s.factory.Discovery().V1().EndpointSlices().Informer()
	s.nodes = s.factory.Core().V1().Nodes().Informer()
	s.nps = s.factory.Networking().V1().NetworkPolicies().Informer()
	s.cnps = s.dyn.ForResource(CNPResource).Informer()
	s.ccnps = s.dyn.ForResource(CCNPResource).Informer()
	// Pods keep only what the agent reads: the informer's memory is the
	// agent's largest at scale.
	if err := s.pods.SetTransform(trimPod); err != nil {
		return nil, err
	}
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.poke() },
		UpdateFunc: func(any, any) { s.poke() },
		DeleteFunc: func(any) { s.poke() },
	}
	for _, inf := range []cache.SharedIndexInformer{s.pods, s.nss, s.svcs, s.eps, s.nodes, s.nps, s.cnps, s.ccnps} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return nil, err
		}
		s.synced = append(s.synced, inf.HasSynced)
	}
	return s, nil
}

// trimPod drops the parts of a pod the agent never reads.
func trimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	p.ManagedFields = nil
	p.Annotations = nil
	p.Status.Conditions = nil
	p.Status.ContainerStatuses = nil
	p.Status.InitContainerStatuses = nil
	p.Spec.Volumes = nil
	for i := range p.Spec.Containers {
		c := &p.Spec.Containers[i]
		c.Env, c.EnvFrom, c.VolumeMounts, c.Command, c.Args = nil, nil, nil, nil, nil
		c.LivenessProbe, c.ReadinessProbe, c.StartupProbe = nil, nil, nil
	}
	return p, nil
}

func (s *Source) poke() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// Start runs the informers until ctx ends.
func (s *Source) Start(ctx context.Context) {
	s.factory.Start(ctx.Done())
	s.dyn.Start(ctx.Done())
}

// WaitForSync blocks until every informer has listed once (or ctx ends).
func (s *Source) WaitForSync(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), s.synced...) {
		return fmt.Errorf("informers did not sync: %w", context.Cause(ctx))
	}
	s.mu.Lock()
	s.isSync = true
	s.mu.Unlock()
	s.poke()
	return nil
}

// Synced reports whether every informer has listed once.
func (s *Source) Synced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.isSync
}

// Wait blocks until something changed (and the batch window passed) or ctx
// ends; it reports whether something changed.
func (s *Source) Wait(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return false
	case <-s.notify:
	}
	t := time.NewTimer(s.opts.Batch)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	}
	// Events that came during the window are in this batch.
	select {
	case <-s.notify:
	default:
	}
	return true
}

// Poke makes the next Wait return (a periodic resync).
func (s *Source) Poke() { s.poke() }

// State reads the listers. Cilium policies are decoded once per
// resourceVersion.
func (s *Source) State() *State {
	st := &State{Objects: &manifest.Set{}, Versions: map[string]string{}}
	add := func(kind, ns, name, rv string, obj any) {
		st.Objects.Add(&manifest.Object{Source: manifest.Source{File: SourceFile}, Kind: kind, Namespace: ns, Name: name, Obj: obj})
		st.Versions[Key(kind, ns, name)] = rv
	}
	for _, o := range sorted(s.nss.GetStore().List()) {
		ns := o.(*corev1.Namespace)
		add("Namespace", "", ns.Name, ns.ResourceVersion, ns)
	}
	for _, o := range sorted(s.svcs.GetStore().List()) {
		v := o.(*corev1.Service)
		add("Service", v.Namespace, v.Name, v.ResourceVersion, v)
	}
	for _, o := range sorted(s.nps.GetStore().List()) {
		v := o.(*networkingv1.NetworkPolicy)
		add("NetworkPolicy", v.Namespace, v.Name, version(v.Generation, v.ResourceVersion), v)
	}
	s.mu.Lock()
	seen := map[string]bool{}
	for _, inf := range []cache.SharedIndexInformer{s.cnps, s.ccnps} {
		for _, o := range sorted(inf.GetStore().List()) {
			u, ok := o.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			uid := string(u.GetUID())
			seen[uid] = true
			rv := version(u.GetGeneration(), u.GetResourceVersion())
			d, ok := s.decoded[uid]
			if !ok || d.rv != rv {
				d = decodedPolicy{rv: rv}
				d.obj, d.err = decodeCilium(u)
				s.decoded[uid] = d
				if d.err != nil {
					s.log.Error("policy not enforced", "kind", u.GetKind(), "namespace", u.GetNamespace(), "name", u.GetName(), "err", d.err)
				}
			}
			if d.err != nil {
				st.Errors = append(st.Errors, PolicyError{Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName(), UID: u.GetUID(), Err: d.err})
				continue
			}
			st.Objects.Add(d.obj)
			st.Versions[Key(d.obj.Kind, d.obj.Namespace, d.obj.Name)] = d.rv
		}
	}
	for uid := range s.decoded {
		if !seen[uid] {
			delete(s.decoded, uid)
		}
	}
	s.mu.Unlock()
	for _, o := range sorted(s.pods.GetStore().List()) {
		p := o.(*corev1.Pod)
		if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		st.Pods = append(st.Pods, p)
	}
	for _, o := range sorted(s.nodes.GetStore().List()) {
		st.Nodes = append(st.Nodes, o.(*corev1.Node))
	}
	for _, o := range sorted(s.eps.GetStore().List()) {
		st.EndpointSlices = append(st.EndpointSlices, o.(*discoveryv1.EndpointSlice))
	}
	return st
}

// version is "g<generation>" for objects that have one, else the
// resourceVersion.
func version(generation int64, rv string) string {
	if generation > 0 {
		return "g" + strconv.FormatInt(generation, 10)
	}
	return rv
}

// decodeCilium turns a cilium.io/v2 object into the sandbox's typed policy
// through the manifest decoder: the same strict decoding and defaulting.
// The status is the agents' own output and is not read.
func decodeCilium(u *unstructured.Unstructured) (*manifest.Object, error) {
	doc := u.DeepCopy().Object
	delete(doc, "status")
	if md, ok := doc["metadata"].(map[string]any); ok {
		// Server-side bookkeeping; the decoder models ObjectMeta but
		// managedFields only costs memory.
		delete(md, "managedFields")
	}
	if doc["apiVersion"] == nil {
		doc["apiVersion"] = api.GroupVersion
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	objs, errs := manifest.DecodeWith(SourceFile, b, manifest.DecodeOptions{NoSizeLimits: true})
	if len(errs) > 0 {
		return nil, errs
	}
	if len(objs) != 1 {
		return nil, fmt.Errorf("decoded %d objects", len(objs))
	}
	o := objs[0]
	switch o.Obj.(type) {
	case *api.CiliumNetworkPolicy, *api.CiliumClusterwideNetworkPolicy:
		return o, nil
	}
	return nil, fmt.Errorf("decoded as %s, not a Cilium policy", o.Kind)
}

type metaObject interface {
	GetNamespace() string
	GetName() string
}

func sorted(objs []any) []any {
	sort.Slice(objs, func(i, j int) bool {
		a, aok := objs[i].(metaObject)
		b, bok := objs[j].(metaObject)
		if !aok || !bok {
			return aok
		}
		if a.GetNamespace() != b.GetNamespace() {
			return a.GetNamespace() < b.GetNamespace()
		}
		return a.GetName() < b.GetName()
	})
	return objs
}

// Pod returns the informer's pod namespace/name.
func (s *Source) Pod(namespace, name string) (*corev1.Pod, bool) {
	o, ok, err := s.pods.GetStore().GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return nil, false
	}
	p, ok := o.(*corev1.Pod)
	return p, ok
}
