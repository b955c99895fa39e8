// Package status writes each Cilium policy's enforcement status back to the
// API server as Cilium's agent does: CiliumNetworkPolicy and
// CiliumClusterwideNetworkPolicy .status.nodes[<node>] = {ok, enforcing,
// error, lastUpdated, localPolicyRevision}, plus the policy's Valid
// condition (shown by `kubectl get cnp`).
//
// Each node writes with server-side apply to the status subresource under
// its own field manager ("bulwark-agent/<node>"), so it owns only its own
// entry of the nodes map: nodes never overwrite each other, and a node
// that forgets a policy removes exactly its entry. The Valid condition is
// co-owned by every node that reports the same value. Writes are batched
// (the last Set of a policy within an interval wins, an unchanged status is
// not written again) and rate-limited; a failed write is retried at the
// next flush, a policy that no longer exists is dropped.
//
// Kubernetes NetworkPolicy has no status Cilium writes; Set ignores kinds
// other than the two above.
package status

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
)

// Kinds with a status written here.
const (
	KindCNP  = "CiliumNetworkPolicy"
	KindCCNP = "CiliumClusterwideNetworkPolicy"
)

var resources = map[string]schema.GroupVersionResource{
	KindCNP:  {Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"},
	KindCCNP: {Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"},
}

// Supports reports whether Set writes a status for kind.
func Supports(kind string) bool { _, ok := resources[kind]; return ok }

// PolicyRef names a policy object. Namespace is empty for a CCNP. UID,
// when set, tells a deleted and re-created policy of the same name from
// the old one (a status is written once per UID); without it the caller
// must Forget a policy when it is deleted.
type PolicyRef struct {
	Kind, Namespace, Name string
	UID                   types.UID
}

func (r PolicyRef) String() string {
	if r.Namespace == "" {
		return r.Kind + " " + r.Name
	}
	return r.Kind + " " + r.Namespace + "/" + r.Name
}

// Status is one node's status of one policy (Cilium's
// CiliumNetworkPolicyNodeStatus).
type Status struct {
	// OK: the policy was parsed and imported into the node's repository.
	OK bool
	// Enforcing: every endpoint the policy selects enforces it.
	Enforcing bool
	// Error says why the policy is not OK or not enforcing.
	Error string
	// Revision is the node's policy revision that implemented it.
	Revision uint64
	// LastUpdated is when the node's status last changed (zero: when Set
	// is called).
	LastUpdated time.Time
}

// Invalid is the status of a policy that failed to parse or validate.
func Invalid(err error) Status {
	msg := "invalid policy"
	if err != nil {
		msg = err.Error()
	}
	return Status{OK: false, Enforcing: false, Error: msg}
}

// Enforcing is the status of a policy that every selected endpoint of the
// node enforces, at policy revision rev.
func Enforcing(rev uint64) Status { return Status{OK: true, Enforcing: true, Revision: rev} }

func (s Status) same(o Status) bool {
	return s.OK == o.OK && s.Enforcing == o.Enforcing && s.Error == o.Error && s.Revision == o.Revision
}

// Options tune a Writer; the zero value is usable.
type Options struct {
	// Interval is how long Sets are gathered before they are written (0: 1s).
	Interval time.Duration
	// QPS and Burst limit the writer's status patches (0: 20 and 50).
	QPS   float64
	Burst int
	// FieldManagerPrefix is followed by "/<node>" (default "bulwark-agent").
	FieldManagerPrefix string
}

// Writer writes one node's statuses. Set and Forget are safe for
// concurrent use and never block on the API server; Run writes.
type Writer struct {
	dyn     dynamic.Interface
	node    string
	manager string
	opts    Options
	limit   *rate.Limiter

	mu      sync.Mutex
	want    map[PolicyRef]Status // Set and not yet written
	forget  map[PolicyRef]bool   // Forget and not yet written
	written map[PolicyRef]Status // last written
	writing int                  // writes of the current flush not done
	kick    chan struct{}
}

// NewWriter returns a writer for node nodeName; call Run to write.
func NewWriter(dyn dynamic.Interface, nodeName string, o Options) (*Writer, error) {
	if nodeName == "" {
		return nil, fmt.Errorf("status: node name is empty")
	}
	if o.Interval == 0 {
		o.Interval = time.Second
	}
	if o.QPS == 0 {
		o.QPS = 20
	}
	if o.Burst == 0 {
		o.Burst = 50
	}
	if o.FieldManagerPrefix == "" {
		o.FieldManagerPrefix = "bulwark-agent"
	}
	return &Writer{
		dyn: dyn, node: nodeName, manager: o.FieldManagerPrefix + "/" + nodeName, opts: o,
		limit:   rate.NewLimiter(rate.Limit(o.QPS), o.Burst),
		want:    map[PolicyRef]Status{},
		forget:  map[PolicyRef]bool{},
		written: map[PolicyRef]Status{},
		kick:    make(chan struct{}, 1),
	}, nil
}

// Set records the node's status of a policy, written at the next flush
// (unless it equals the status last written). Kinds Supports rejects are
// ignored.
func (w *Writer) Set(ref PolicyRef, st Status) {
	if !Supports(ref.Kind) {
		return
	}
	if st.LastUpdated.IsZero() {
		st.LastUpdated = time.Now()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.forget, ref)
	if last, ok := w.written[ref]; ok && last.same(st) {
		delete(w.want, ref)
		return
	}
	if cur, ok := w.want[ref]; ok && cur.same(st) {
		return // keep the first LastUpdated of an unchanged status
	}
	w.want[ref] = st
	w.signal()
}

// Forget stops reporting a policy on this node and removes the node's
// entry (and its share of the Valid condition) from the policy's status.
func (w *Writer) Forget(ref PolicyRef) {
	if !Supports(ref.Kind) {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.want, ref)
	if _, ok := w.written[ref]; ok || w.forget[ref] {
		w.forget[ref] = true
		w.signal()
	}
}

func (w *Writer) signal() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// Pending returns the number of statuses not yet written (in flight
// included).
func (w *Writer) Pending() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.want) + len(w.forget) + w.writing
}

// Run writes the recorded statuses until ctx ends: after a Set, it waits
// Interval for more, then writes each changed policy once.
func (w *Writer) Run(ctx context.Context) {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.kick:
		case <-retry.C:
		}
		select { // gather a batch
		case <-ctx.Done():
			return
		case <-time.After(w.opts.Interval):
		}
		if failed := w.flush(ctx); failed > 0 {
			retry.Reset(5 * w.opts.Interval)
		}
	}
}

// flush writes every pending status and returns how many writes failed
// (they stay pending).
func (w *Writer) flush(ctx context.Context) int {
	w.mu.Lock()
	want, forget := w.want, w.forget
	w.want, w.forget = map[PolicyRef]Status{}, map[PolicyRef]bool{}
	w.writing = len(want) + len(forget)
	w.mu.Unlock()

	failed := 0
	for ref, st := range want {
		err := w.apply(ctx, ref, &st)
		w.mu.Lock()
		w.writing--
		_, newer := w.want[ref]
		switch {
		case err == nil:
			w.written[ref] = st
		case gone(err):
			delete(w.written, ref) // the policy is gone
		default:
			failed++
			if !newer && !w.forget[ref] {
				w.want[ref] = st
			}
		}
		w.mu.Unlock()
	}
	for ref := range forget {
		err := w.apply(ctx, ref, nil)
		w.mu.Lock()
		w.writing--
		_, newer := w.want[ref]
		switch {
		case err == nil || gone(err):
			if !newer {
				delete(w.written, ref)
			}
		default:
			failed++
			if !newer {
				w.forget[ref] = true
			}
		}
		w.mu.Unlock()
	}
	return failed
}

// gone reports a write to a policy that no longer exists: not found, or
// (with a UID precondition) replaced by another object of the same name.
// Force is set, so a conflict is never about field ownership.
func gone(err error) bool { return apierrors.IsNotFound(err) || apierrors.IsConflict(err) }

// apply server-side-applies this node's part of ref's status: st, or
// nothing (which removes what the node owned) when st is nil.
func (w *Writer) apply(ctx context.Context, ref PolicyRef, st *Status) error {
	if err := w.limit.Wait(ctx); err != nil {
		return err
	}
	status := map[string]any{}
	if st != nil {
		node := map[string]any{
			"ok":                  st.OK,
			"enforcing":           st.Enforcing,
			"lastUpdated":         st.LastUpdated.UTC().Format(time.RFC3339),
			"localPolicyRevision": st.Revision,
		}
		if st.Error != "" {
			node["error"] = st.Error
		}
		cond := map[string]any{"type": "Valid", "status": "True"}
		if !st.OK {
			cond = map[string]any{"type": "Valid", "status": "False", "reason": "InvalidPolicy", "message": st.Error}
		}
		status["nodes"] = map[string]any{w.node: node}
		status["conditions"] = []any{cond}
	}
	meta := map[string]any{"name": ref.Name}
	if ref.UID != "" {
		meta["uid"] = string(ref.UID) // a precondition: never another object's status
	}
	if ref.Kind == KindCNP {
		meta["namespace"] = ref.Namespace
	}
	body, err := json.Marshal(map[string]any{
		"apiVersion": "cilium.io/v2", "kind": ref.Kind,
		"metadata": meta, "status": status,
	})
	if err != nil {
		return err
	}
	gvr := resources[ref.Kind]
	var ri dynamic.ResourceInterface = w.dyn.Resource(gvr)
	if ref.Kind == KindCNP {
		ri = w.dyn.Resource(gvr).Namespace(ref.Namespace)
	}
	force := true
	_, err = ri.Patch(ctx, ref.Name, types.ApplyPatchType, body,
		metav1.PatchOptions{FieldManager: w.manager, Force: &force}, "status")
	if err != nil {
		return fmt.Errorf("status: write %s on node %s: %w", ref, w.node, err)
	}
	return nil
}
