// Package identity numbers security identities cluster-wide through the
// Kubernetes API server with CiliumIdentity objects (cilium.io/v2), as
// Cilium's CRD identity mode does: the object's name is the number, its
// security-labels field the label set ("k8s:app" -> "web", Cilium's
// format), its metadata.labels the Kubernetes-valid k8s: labels (so that
// `kubectl get ciliumid -l app=web` works). It implements
// identity.ClusterNumbering for identity.NewClusterAllocator.
//
// # Numbering
//
// A label set's candidate numbers are a deterministic probe sequence
// derived from a hash of its canonical string (open addressing over the
// API server): candidate i = Min + hash(labels, i) mod (Max-Min). Number
// returns the number the informer cache already knows for the set;
// otherwise it walks the candidates: a number held by another set is
// skipped, a free one is created. Creating fails with AlreadyExists when
// another agent took the number first; the object is then read back and
// adopted if it carries the same labels (two agents racing for one set
// try the same candidates in the same order, so they converge on ONE
// number without a lock), or skipped if not. Objects created by Cilium
// itself (any number in range, or duplicates for one set) are honoured:
// when several objects carry the same set, the lowest number is used.
//
// # Range and scale
//
// The default range is [identity.MinCluster, identity.LocalScope) =
// [256, 16777216): 16,776,960 numbers (Cilium's own range for cluster ID
// 0 is [256, 65536), which 100k identities would overflow). At 100k
// identities the space is 0.6% full, so a new set almost always takes its
// first candidate; MaxProbes (64) consecutive taken candidates would need
// the space nearly full and make Number fail with an error, never wrap or
// reuse a number.
//
// # Garbage collection
//
// Collect (see gc.go) deletes identities no pod of the cluster uses,
// Cilium-style: an unused identity is first marked with the
// UnusedSinceAnnotation, deleted only after a grace period and only if its
// object is unchanged since (resourceVersion precondition); Number
// unmarks a marked identity it hands out, which makes a pending deletion
// fail. Deleting an identity that other sets were probed past opens the
// usual open-addressing window: an agent whose cache has not yet seen a
// just-created object for a set may create a second one for it at an
// earlier candidate; both are valid (policy selects by labels), and agents
// that learn of both use the lowest.
package identity

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"

	"github.com/bulwark-net/bulwark/internal/identity"
)

// Resource is the CiliumIdentity resource.
var Resource = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumidentities"}

// MaxProbes bounds the candidates Number tries for a new label set.
const MaxProbes = 64

// Options configure a Numbering; the zero value is usable.
type Options struct {
	// Min and Max bound the numbers allocated, [Min, Max); zero values
	// mean identity.MinCluster and identity.LocalScope.
	Min, Max identity.NumericIdentity
	// Timeout bounds one Number call's API requests (0: 30s).
	Timeout time.Duration
	// FieldManager names the writer of created objects (default "bulwark-agent").
	FieldManager string
}

// Numbering allocates cluster-wide identities through the API server.
// Number is safe for concurrent use once Start has returned.
type Numbering struct {
	client dynamic.NamespaceableResourceInterface
	opts   Options

	mu     sync.RWMutex
	byKey  map[string][]identity.NumericIdentity // sorted, usually one
	byNum  map[identity.NumericIdentity]string
	marked map[identity.NumericIdentity]mark // UnusedSinceAnnotation set
	ctx    context.Context
	synced bool

	allocMu sync.Mutex // one allocation at a time per agent
}

// New returns a Numbering using dyn; call Start before Number.
func New(dyn dynamic.Interface, o Options) (*Numbering, error) {
	if o.Min == 0 {
		o.Min = identity.MinCluster
	}
	if o.Max == 0 {
		o.Max = identity.LocalScope
	}
	if o.Min < identity.MinCluster || o.Max > identity.LocalScope || o.Min >= o.Max {
		return nil, fmt.Errorf("k8s identity: range [%d, %d) is not a non-empty part of the cluster range [%d, %d)", o.Min, o.Max, identity.MinCluster, identity.LocalScope)
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	if o.FieldManager == "" {
		o.FieldManager = "bulwark-agent"
	}
	return &Numbering{
		client: dyn.Resource(Resource),
		opts:   o,
		byKey:  map[string][]identity.NumericIdentity{},
		byNum:  map[identity.NumericIdentity]string{},
		marked: map[identity.NumericIdentity]mark{},
	}, nil
}

// Start runs the CiliumIdentity informer until ctx ends and returns once
// its cache has synced (or ctx ends first, with an error).
func (n *Numbering) Start(ctx context.Context) error {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return n.client.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return n.client.Watch(ctx, o)
		},
	}
	_, ctrl := cache.NewInformerWithOptions(cache.InformerOptions{
		ListerWatcher: lw,
		ObjectType:    &unstructured.Unstructured{},
		Transform:     compact,
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { n.observe(o, true) },
			UpdateFunc: func(old, o any) { n.observe(old, false); n.observe(o, true) },
			DeleteFunc: func(o any) {
				if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
					o = d.Obj
				}
				n.observe(o, false)
			},
		},
	})
	n.mu.Lock()
	n.ctx = ctx
	n.mu.Unlock()
	go ctrl.RunWithContext(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), ctrl.HasSynced) {
		return fmt.Errorf("k8s identity: CiliumIdentity cache did not sync: %w", context.Cause(ctx))
	}
	n.mu.Lock()
	n.synced = true
	n.mu.Unlock()
	return nil
}

// entry is the part of a CiliumIdentity the cache keeps: its number and
// canonical label string (a few dozen bytes instead of the object).
type entry struct {
	metav1.TypeMeta
	metav1.ObjectMeta
	num    identity.NumericIdentity
	key    string
	ok     bool // a valid number in range and parseable labels
	unused time.Time
}

func (e *entry) DeepCopyObject() runtime.Object {
	c := *e
	e.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	return &c
}

// compact is the informer's transform: it keeps only what entry needs.
func compact(o any) (any, error) {
	u, ok := o.(*unstructured.Unstructured)
	if !ok {
		return o, nil // DeletedFinalStateUnknown and the like
	}
	e := &entry{ObjectMeta: metav1.ObjectMeta{Name: u.GetName(), ResourceVersion: u.GetResourceVersion()}}
	num, ls, err := parse(u)
	if err == nil {
		e.num, e.key, e.ok = num, ls.String(), true
	}
	if v, ok := u.GetAnnotations()[UnusedSinceAnnotation]; ok {
		e.unused, _ = time.Parse(time.RFC3339, v)
		if e.unused.IsZero() {
			e.unused = time.Unix(0, 0) // unparseable: marked long ago
		}
	}
	return e, nil
}

func (n *Numbering) forget(num identity.NumericIdentity, key string) {
	n.observe(&entry{num: num, key: key, ok: true}, false)
}

func (n *Numbering) observe(o any, add bool) {
	e, ok := o.(*entry)
	if !ok || !e.ok {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if add {
		n.recordLocked(e.num, e.key)
		if e.unused.IsZero() {
			delete(n.marked, e.num)
		} else {
			n.marked[e.num] = mark{e.unused, e.ResourceVersion}
		}
		return
	}
	if n.byNum[e.num] != e.key {
		return
	}
	delete(n.byNum, e.num)
	delete(n.marked, e.num)
	ids := slices.DeleteFunc(n.byKey[e.key], func(x identity.NumericIdentity) bool { return x == e.num })
	if len(ids) == 0 {
		delete(n.byKey, e.key)
	} else {
		n.byKey[e.key] = ids
	}
}

func (n *Numbering) recordLocked(num identity.NumericIdentity, key string) {
	if old, ok := n.byNum[num]; ok {
		if old == key {
			return
		}
		// Labels of an identity never change in Cilium; if an object was
		// replaced, forget the old set's claim on the number.
		n.byKey[old] = slices.DeleteFunc(n.byKey[old], func(x identity.NumericIdentity) bool { return x == num })
		if len(n.byKey[old]) == 0 {
			delete(n.byKey, old)
		}
	}
	n.byNum[num] = key
	ids := n.byKey[key]
	i, _ := slices.BinarySearch(ids, num)
	n.byKey[key] = slices.Insert(ids, i, num)
}

// parse reads a CiliumIdentity: its name as a number and its
// security-labels as a label set.
func parse(u *unstructured.Unstructured) (identity.NumericIdentity, identity.Labels, error) {
	v, err := strconv.ParseUint(u.GetName(), 10, 32)
	if err != nil {
		return 0, nil, fmt.Errorf("CiliumIdentity %q: name is not a number", u.GetName())
	}
	m, found, err := unstructured.NestedStringMap(u.Object, "security-labels")
	if err != nil || !found {
		return 0, nil, fmt.Errorf("CiliumIdentity %q: security-labels missing or not a string map", u.GetName())
	}
	ls, err := FromSecurityLabels(m)
	if err != nil {
		return 0, nil, fmt.Errorf("CiliumIdentity %q: %w", u.GetName(), err)
	}
	return identity.NumericIdentity(v), ls, nil
}

// SecurityLabels is the security-labels map of a label set, Cilium's
// format: "source:key" -> value.
func SecurityLabels(ls identity.Labels) map[string]string {
	m := make(map[string]string, len(ls))
	for _, l := range ls {
		m[l.Source+":"+l.Key] = l.Value
	}
	return m
}

// FromSecurityLabels parses a security-labels map (see SecurityLabels).
func FromSecurityLabels(m map[string]string) (identity.Labels, error) {
	ls := make([]identity.Label, 0, len(m))
	for k, v := range m {
		src, key, ok := strings.Cut(k, ":")
		if !ok || src == "" || key == "" {
			return nil, fmt.Errorf("security label %q is not source:key", k)
		}
		ls = append(ls, identity.Label{Source: src, Key: key, Value: v})
	}
	return identity.NewLabels(ls...), nil
}

// objectLabels are the metadata.labels of a CiliumIdentity: its k8s:
// labels that are valid Kubernetes labels (as Cilium does; the rest is only
// in security-labels).
func objectLabels(ls identity.Labels) map[string]string {
	m := map[string]string{}
	for _, l := range ls {
		if l.Source != identity.SourceK8s {
			continue
		}
		if len(validation.IsQualifiedName(l.Key)) == 0 && len(validation.IsValidLabelValue(l.Value)) == 0 {
			m[l.Key] = l.Value
		}
	}
	return m
}

// Candidate returns the i-th number Number tries for a label set.
func (n *Numbering) Candidate(ls identity.Labels, i int) identity.NumericIdentity {
	return n.candidate(ls.String(), i)
}

func (n *Numbering) candidate(key string, i int) identity.NumericIdentity {
	h := fnv.New64a()
	h.Write([]byte(key))
	h.Write([]byte{0, byte(i), byte(i >> 8)})
	size := uint64(n.opts.Max - n.opts.Min)
	return n.opts.Min + identity.NumericIdentity(h.Sum64()%size)
}

// Lookup returns the number the cache knows for a label set (the lowest,
// if several objects carry it).
func (n *Numbering) Lookup(ls identity.Labels) (identity.NumericIdentity, bool) {
	return n.lookup(ls.String())
}

func (n *Numbering) lookup(key string) (identity.NumericIdentity, bool) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if ids := n.byKey[key]; len(ids) > 0 {
		return ids[0], true
	}
	return 0, false
}

// Labels returns the label set of a number, if the cache knows it.
func (n *Numbering) Labels(num identity.NumericIdentity) (identity.Labels, bool) {
	n.mu.RLock()
	key, ok := n.byNum[num]
	n.mu.RUnlock()
	if !ok {
		return nil, false
	}
	ls, err := parseKey(key)
	return ls, err == nil
}

func parseKey(key string) (identity.Labels, error) {
	m := map[string]string{}
	for _, part := range strings.Split(key, ",") {
		k, v, _ := strings.Cut(part, "=")
		m[k] = v
	}
	return FromSecurityLabels(m)
}

// Len returns the number of identities in the cache.
func (n *Numbering) Len() int {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return len(n.byNum)
}

var errNotStarted = errors.New("k8s identity: Number called before Start synced the cache")

// Number returns the cluster-wide number of ls, creating a CiliumIdentity
// when the cluster has none for it (see the package comment).
func (n *Numbering) Number(ls identity.Labels) (identity.NumericIdentity, error) {
	key := ls.String()
	if len(ls) == 0 {
		return 0, errors.New("k8s identity: empty label set")
	}
	num, ok := n.lookup(key)
	if ok && !n.isMarked(num) {
		return num, nil
	}
	n.mu.RLock()
	base, synced := n.ctx, n.synced
	n.mu.RUnlock()
	if !synced {
		return 0, errNotStarted
	}
	ctx, cancel := context.WithTimeout(base, n.opts.Timeout)
	defer cancel()
	if ok {
		// In use again: unmark it, which fails any pending deletion.
		err := n.unmark(ctx, num)
		if err == nil {
			return num, nil
		}
		if !apierrors.IsNotFound(err) {
			return 0, fmt.Errorf("k8s identity: reuse %d for %s: %w", num, key, err)
		}
		n.forget(num, key) // collected meanwhile: allocate again
	}
	n.allocMu.Lock()
	defer n.allocMu.Unlock()
	if num, ok := n.lookup(key); ok && !n.isMarked(num) { // allocated while we waited
		return num, nil
	}
	for i := 0; i < MaxProbes; i++ {
		num := n.candidate(key, i)
		n.mu.RLock()
		holder, known := n.byNum[num]
		n.mu.RUnlock()
		if known {
			if holder == key {
				return num, nil
			}
			continue
		}
		got, err := n.claim(ctx, num, ls, key)
		if err != nil {
			return 0, fmt.Errorf("k8s identity: allocate %s: %w", key, err)
		}
		if got {
			return num, nil
		}
	}
	return 0, fmt.Errorf("k8s identity: allocate %s: %d candidates in [%d, %d) all held by other label sets", key, MaxProbes, n.opts.Min, n.opts.Max)
}

// claim creates the CiliumIdentity num for ls, or adopts it if another
// agent created it for the same set; it reports false if num holds another
// set.
func (n *Numbering) claim(ctx context.Context, num identity.NumericIdentity, ls identity.Labels, key string) (bool, error) {
	name := strconv.FormatUint(uint64(num), 10)
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cilium.io/v2",
		"kind":       "CiliumIdentity",
		"metadata": map[string]any{
			"name":   name,
			"labels": toAny(objectLabels(ls)),
		},
		"security-labels": toAny(SecurityLabels(ls)),
	}}
	for attempt := 0; attempt < 3; attempt++ {
		_, err := n.client.Create(ctx, obj, metav1.CreateOptions{FieldManager: n.opts.FieldManager})
		if err == nil {
			n.mu.Lock()
			n.recordLocked(num, key)
			n.mu.Unlock()
			return true, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return false, fmt.Errorf("create CiliumIdentity %s: %w", name, err)
		}
		cur, err := n.client.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue // deleted in between: try to create it again
		}
		if err != nil {
			return false, fmt.Errorf("read CiliumIdentity %s: %w", name, err)
		}
		_, curLs, err := parse(cur)
		if err != nil {
			return false, nil // unusable object: skip the number
		}
		curKey := curLs.String()
		n.mu.Lock()
		n.recordLocked(num, curKey)
		n.mu.Unlock()
		return curKey == key, nil
	}
	return false, nil
}

func toAny(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

var _ identity.ClusterNumbering = (*Numbering)(nil)
