package identity

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/bulwark-net/bulwark/internal/identity"
)

// UnusedSinceAnnotation marks a CiliumIdentity that Collect found unused,
// with the time (RFC 3339) it first did.
const UnusedSinceAnnotation = "bulwark.io/unused-since"

type mark struct {
	since time.Time
	rv    string // resourceVersion of the marked object
}

// Marked reports whether the cache has num marked unused by Collect.
func (n *Numbering) Marked(num identity.NumericIdentity) bool { return n.isMarked(num) }

func (n *Numbering) isMarked(num identity.NumericIdentity) bool {
	n.mu.RLock()
	defer n.mu.RUnlock()
	_, ok := n.marked[num]
	return ok
}

func (n *Numbering) annotate(ctx context.Context, num identity.NumericIdentity, value any) error {
	patch := fmt.Appendf(nil, `{"metadata":{"annotations":{%q:%s}}}`, UnusedSinceAnnotation, value)
	_, err := n.client.Patch(ctx, strconv.FormatUint(uint64(num), 10), types.MergePatchType, patch,
		metav1.PatchOptions{FieldManager: n.opts.FieldManager})
	return err
}

func (n *Numbering) unmark(ctx context.Context, num identity.NumericIdentity) error {
	if err := n.annotate(ctx, num, "null"); err != nil {
		return err
	}
	n.mu.Lock()
	delete(n.marked, num)
	n.mu.Unlock()
	return nil
}

// CollectOptions configure Collect.
type CollectOptions struct {
	// InUse reports whether any pod of the cluster uses an identity
	// (required: every agent's pod informer sees all pods, so any agent
	// can answer; several agents may Collect at once).
	InUse func(identity.NumericIdentity) bool
	// Grace is how long an identity stays marked unused before it is
	// deleted (0: 15 minutes, Cilium's default). It must exceed the grace
	// of the agents' identity.Allocator sweeps, so that no node still
	// holds a number when its object goes.
	Grace time.Duration
	// Now is the collection's time (zero: time.Now()).
	Now time.Time
}

// Collect marks the cached identities that are not in use, unmarks those in
// use again, and deletes those marked for at least Grace whose objects have
// not changed since they were marked. It returns the numbers deleted,
// sorted.
func (n *Numbering) Collect(ctx context.Context, o CollectOptions) ([]identity.NumericIdentity, error) {
	if o.InUse == nil {
		return nil, fmt.Errorf("k8s identity: Collect needs InUse")
	}
	if o.Grace == 0 {
		o.Grace = 15 * time.Minute
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	type item struct {
		num    identity.NumericIdentity
		marked bool
		m      mark
	}
	n.mu.RLock()
	items := make([]item, 0, len(n.byNum))
	for num := range n.byNum {
		m, marked := n.marked[num]
		items = append(items, item{num, marked, m})
	}
	n.mu.RUnlock()

	var deleted []identity.NumericIdentity
	for _, it := range items {
		var err error
		switch used := o.InUse(it.num); {
		case used && it.marked:
			err = n.unmark(ctx, it.num)
		case used:
		case !it.marked:
			err = n.annotate(ctx, it.num, strconv.Quote(o.Now.UTC().Format(time.RFC3339)))
		case o.Now.Sub(it.m.since) >= o.Grace:
			rv := it.m.rv
			err = n.client.Delete(ctx, strconv.FormatUint(uint64(it.num), 10), metav1.DeleteOptions{
				Preconditions: &metav1.Preconditions{ResourceVersion: &rv},
			})
			if err == nil {
				deleted = append(deleted, it.num)
			}
			if apierrors.IsConflict(err) {
				err = nil // unmarked (or re-marked) meanwhile: not this time
			}
		}
		if apierrors.IsNotFound(err) {
			err = nil
		}
		if err != nil {
			return deleted, fmt.Errorf("k8s identity: collect %d: %w", it.num, err)
		}
	}
	slices.Sort(deleted)
	return deleted, nil
}
