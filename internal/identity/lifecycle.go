package identity

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Identity lifecycle. An identity is in use while a reference taken with
// Acquire (or AcquireCIDR) is held, or while the owner of the allocator
// says so to Sweep (the policy repository knows which identities its pods,
// CIDR prefixes and learned addresses use without holding references).
// Sweep frees an identity that has been out of use for a grace period:
// its label set loses its number, the number is reused by a later
// allocation, and it leaves All (so the persisted state shrinks).
// Allocating a label set again within the grace period keeps its number.

// Acquire is Allocate plus a reference: the identity is not freed until
// Release is called as many times as Acquire.
func (a *Allocator) Acquire(ls Labels) (id NumericIdentity, created bool, err error) {
	return a.acquire(ls, false)
}

// AcquireCIDR is AllocateCIDR plus a reference (see Acquire): for prefixes
// a component holds on its own, such as FQDN-learned addresses.
func (a *Allocator) AcquireCIDR(p netip.Prefix) (id NumericIdentity, created bool, err error) {
	return a.acquire(CIDRLabels(p), true)
}

func (a *Allocator) acquire(ls Labels, local bool) (NumericIdentity, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	id, created, err := a.allocateLocked(ls.String(), ls, local)
	if err != nil {
		return 0, false, err
	}
	a.refs[id]++
	return id, created, nil
}

// Release drops one reference taken by Acquire. The identity stays
// allocated until a Sweep finds it unused for the grace period.
func (a *Allocator) Release(id NumericIdentity) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	n, ok := a.refs[id]
	if !ok {
		return fmt.Errorf("release identity %d: no reference held", id)
	}
	if n <= 1 {
		delete(a.refs, id)
	} else {
		a.refs[id] = n - 1
	}
	return nil
}

// Refs returns the number of references held on id.
func (a *Allocator) Refs(id NumericIdentity) int {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.refs[id]
}

// SweepOptions configure Sweep.
type SweepOptions struct {
	// InUse reports identities the caller uses without holding a
	// reference (nil: none).
	InUse func(NumericIdentity) bool
	// Grace is how long an identity must have been found unused before
	// it is freed (0: at the first sweep that finds it unused).
	Grace time.Duration
	// Now is the sweep's time (zero: time.Now()).
	Now time.Time
}

// Sweep frees the identities that are neither referenced nor InUse and
// have been found so by sweeps for at least Grace; it returns them,
// sorted. Reserved identities are never freed.
func (a *Allocator) Sweep(o SweepOptions) []NumericIdentity {
	now := o.Now
	if now.IsZero() {
		now = time.Now()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var freed []NumericIdentity
	for id, ls := range a.labels {
		if id.IsReserved() || a.refs[id] > 0 || (o.InUse != nil && o.InUse(id)) {
			delete(a.unusedSince, id)
			continue
		}
		since, ok := a.unusedSince[id]
		if !ok {
			a.unusedSince[id] = now
			since = now
		}
		if now.Sub(since) < o.Grace {
			continue
		}
		delete(a.unusedSince, id)
		delete(a.labels, id)
		delete(a.byKey, ls.String())
		if id.IsLocal() {
			a.freeLocal = insertSorted(a.freeLocal, id)
		} else {
			a.freePod = insertSorted(a.freePod, id)
		}
		freed = append(freed, id)
	}
	// Free numbers at the top give the space back instead, so that the
	// free lists and the numbering return to where they were.
	for len(a.freePod) > 0 && a.freePod[len(a.freePod)-1] == a.nextPod-1 {
		a.freePod = a.freePod[:len(a.freePod)-1]
		a.nextPod--
	}
	for len(a.freeLocal) > 0 && a.freeLocal[len(a.freeLocal)-1] == a.nextLocal-1 {
		a.freeLocal = a.freeLocal[:len(a.freeLocal)-1]
		a.nextLocal--
	}
	slices.Sort(freed)
	return freed
}

// Len returns the number of allocated identities, reserved included.
func (a *Allocator) Len() int {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return len(a.labels)
}

func insertSorted(s []NumericIdentity, id NumericIdentity) []NumericIdentity {
	i, found := slices.BinarySearch(s, id)
	if found {
		return s
	}
	return slices.Insert(s, i, id)
}

func removeSorted(s []NumericIdentity, id NumericIdentity) []NumericIdentity {
	if i, found := slices.BinarySearch(s, id); found {
		return slices.Delete(s, i, i+1)
	}
	return s
}
