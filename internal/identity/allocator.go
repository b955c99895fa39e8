package identity

import (
	"fmt"
	"net/netip"
	"sync"
	"time"
)

// Entity names usable in toEntities/fromEntities (Cilium's list).
const (
	EntityAll           = "all"
	EntityWorld         = "world"
	EntityWorldIPv4     = "world-ipv4"
	EntityWorldIPv6     = "world-ipv6"
	EntityCluster       = "cluster"
	EntityHost          = "host"
	EntityRemoteNode    = "remote-node"
	EntityKubeAPIServer = "kube-apiserver"
	EntityHealth        = "health"
	EntityInit          = "init"
	EntityIngress       = "ingress"
	EntityUnmanaged     = "unmanaged"
	EntityNone          = "none"
)

// ReservedLabels returns the label set of a reserved identity. The world
// identities also carry the cidr: label of the whole address space of their
// family, so that a 0.0.0.0/0 (or ::/0) CIDR selector selects addresses that
// no known prefix covers.
func ReservedLabels(id NumericIdentity) (Labels, bool) {
	name, ok := reservedNames[id]
	if !ok || id == Unknown {
		return nil, false
	}
	ls := []Label{{SourceReserved, name, ""}}
	v4 := Label{SourceCIDR, CIDRKey(netip.MustParsePrefix("0.0.0.0/0")), ""}
	v6 := Label{SourceCIDR, CIDRKey(netip.MustParsePrefix("::/0")), ""}
	switch id {
	case World:
		ls = append(ls, v4, v6)
	case WorldIPv4:
		ls = append(ls, v4)
	case WorldIPv6:
		ls = append(ls, v6)
	}
	return NewLabels(ls...), true
}

// ReservedIdentities lists the reserved identities that have labels, in
// numeric order.
func ReservedIdentities() []NumericIdentity {
	return []NumericIdentity{Host, World, Unmanaged, Health, Init, RemoteNode, KubeAPIServer, Ingress, WorldIPv4, WorldIPv6}
}

// WorldFor returns the world identity of an address's family.
func WorldFor(a netip.Addr) NumericIdentity {
	if a.Unmap().Is4() {
		return WorldIPv4
	}
	return WorldIPv6
}

// Allocator assigns numeric identities to label sets. Invariants: a label
// set keeps its identity for as long as it is in use (see Sweep); cluster
// identities are allocated from MinCluster up, CIDR identities from
// LocalScope|1 up, a number freed by Sweep being reused (lowest first)
// before a new one is taken; reserved identities are pre-registered with
// their labels and never freed. Safe for concurrent use.
type Allocator struct {
	mu        sync.RWMutex
	byKey     map[string]NumericIdentity
	labels    map[NumericIdentity]Labels
	nextPod   NumericIdentity
	nextLocal NumericIdentity

	// Lifecycle (see lifecycle.go): references held through Acquire, the
	// time a Sweep first found an identity unused, freed numbers.
	refs        map[NumericIdentity]int
	unusedSince map[NumericIdentity]time.Time
	freePod     []NumericIdentity // sorted
	freeLocal   []NumericIdentity // sorted

	// numbering, when set, numbers cluster identities (see ClusterNumbering).
	numbering ClusterNumbering
}

// ClusterNumbering numbers cluster identities (label sets of pods) so that
// every node of a cluster gives the same label set the same number: in
// Kubernetes mode, through CiliumIdentity objects in the API server.
// Local (CIDR) identities stay node-scoped and never go through it.
type ClusterNumbering interface {
	// Number returns the cluster-wide number of a label set, allocating
	// one when the set is new to the cluster. The number must be in
	// [MinCluster, LocalScope).
	Number(ls Labels) (NumericIdentity, error)
}

// NewClusterAllocator returns an allocator whose cluster identities come
// from n (reserved and local identities are as in NewAllocator).
func NewClusterAllocator(n ClusterNumbering) *Allocator {
	a := NewAllocator()
	a.numbering = n
	return a
}

// NewAllocator returns an allocator holding the reserved identities.
func NewAllocator() *Allocator {
	a := &Allocator{
		byKey:     map[string]NumericIdentity{},
		labels:    map[NumericIdentity]Labels{},
		nextPod:   MinCluster,
		nextLocal: LocalScope | 1,

		refs:        map[NumericIdentity]int{},
		unusedSince: map[NumericIdentity]time.Time{},
	}
	for _, id := range ReservedIdentities() {
		ls, _ := ReservedLabels(id)
		a.byKey[ls.String()] = id
		a.labels[id] = ls
	}
	return a
}

// Allocate returns the cluster identity of a label set, allocating it on
// first use; created reports a new allocation.
func (a *Allocator) Allocate(ls Labels) (id NumericIdentity, created bool, err error) {
	return a.allocate(ls, false)
}

// AllocateCIDR returns the local identity of a prefix (labels CIDRLabels(p)).
func (a *Allocator) AllocateCIDR(p netip.Prefix) (id NumericIdentity, created bool, err error) {
	return a.allocate(CIDRLabels(p), true)
}

func (a *Allocator) allocate(ls Labels, local bool) (NumericIdentity, bool, error) {
	key := ls.String()
	a.mu.RLock()
	id, ok := a.byKey[key]
	_, marked := a.unusedSince[id]
	a.mu.RUnlock()
	if ok && !marked {
		return id, false, nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.allocateLocked(key, ls, local)
}

func (a *Allocator) allocateLocked(key string, ls Labels, local bool) (NumericIdentity, bool, error) {
	if id, ok := a.byKey[key]; ok {
		// In use again: a pending collection is off.
		delete(a.unusedSince, id)
		return id, false, nil
	}
	var id NumericIdentity
	switch {
	case !local && a.numbering != nil:
		n, err := a.numbering.Number(ls)
		if err != nil {
			return 0, false, fmt.Errorf("allocate identity for %s: %w", key, err)
		}
		if n < MinCluster || n >= LocalScope {
			return 0, false, fmt.Errorf("allocate identity for %s: cluster numbering gave %d, outside [%d, %d)", key, n, MinCluster, LocalScope)
		}
		if other, taken := a.labels[n]; taken {
			return 0, false, fmt.Errorf("allocate identity for %s: cluster numbering gave %d, which this node holds for %s", key, n, other)
		}
		id = n
	case local && len(a.freeLocal) > 0:
		id, a.freeLocal = a.freeLocal[0], a.freeLocal[1:]
	case local:
		if a.nextLocal >= LocalScope<<1 {
			return 0, false, fmt.Errorf("allocate local identity for %s: local identity space exhausted", key)
		}
		id = a.nextLocal
		a.nextLocal++
	case len(a.freePod) > 0:
		id, a.freePod = a.freePod[0], a.freePod[1:]
	default:
		if a.nextPod >= LocalScope {
			return 0, false, fmt.Errorf("allocate identity for %s: cluster identity space exhausted", key)
		}
		id = a.nextPod
		a.nextPod++
	}
	a.byKey[key] = id
	a.labels[id] = ls
	return id, true, nil
}

// Lookup returns the labels of an identity.
func (a *Allocator) Lookup(id NumericIdentity) (Labels, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	ls, ok := a.labels[id]
	return ls, ok
}

// LookupLabels returns the identity of a label set without allocating.
func (a *Allocator) LookupLabels(ls Labels) (NumericIdentity, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	id, ok := a.byKey[ls.String()]
	return id, ok
}

// All returns every allocated identity (reserved included) with its labels.
// The map is a copy.
func (a *Allocator) All() map[NumericIdentity]Labels {
	a.mu.RLock()
	defer a.mu.RUnlock()
	out := make(map[NumericIdentity]Labels, len(a.labels))
	for id, ls := range a.labels {
		out[id] = ls
	}
	return out
}

// Restore registers a label set under a known identity (one persisted by
// a previous run), so that identities survive restarts. It fails if the
// number or the label set is already taken by something else. Later
// allocations continue above the highest restored identity of its scope.
func (a *Allocator) Restore(id NumericIdentity, ls Labels) error {
	if id.IsReserved() {
		return fmt.Errorf("restore identity %d: reserved", id)
	}
	key := ls.String()
	a.mu.Lock()
	defer a.mu.Unlock()
	if have, ok := a.byKey[key]; ok {
		if have == id {
			return nil
		}
		return fmt.Errorf("restore identity %d (%s): labels already have identity %d", id, key, have)
	}
	if have, ok := a.labels[id]; ok {
		return fmt.Errorf("restore identity %d (%s): number already used by %s", id, key, have)
	}
	a.byKey[key] = id
	a.labels[id] = ls
	a.freePod = removeSorted(a.freePod, id)
	a.freeLocal = removeSorted(a.freeLocal, id)
	if id.IsLocal() {
		if id >= a.nextLocal {
			a.nextLocal = id + 1
		}
	} else if id >= a.nextPod {
		a.nextPod = id + 1
	}
	return nil
}
