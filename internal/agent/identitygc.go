package agent

import (
	"context"
	"math/rand/v2"
	"runtime/debug"
	"time"

	"github.com/bulwark-net/bulwark/internal/identity"
	k8sidentity "github.com/bulwark-net/bulwark/internal/k8s/identity"
	"github.com/bulwark-net/bulwark/internal/policy"
)

// defaultIdentityGrace is how long an identity nothing uses keeps its
// number before it is freed: a pod recreated, or a policy re-applied,
// within it finds its identity (and the datapath's entries) unchanged.
const defaultIdentityGrace = time.Minute

// identitiesInUse is every identity the snapshot uses: its endpoints' and
// its ipcache's (pods, CIDR prefixes, learned addresses). It covers every
// identity the policy repository evaluates selectors against, so a number
// outside it can be freed and given to another label set.
func identitiesInUse(snap *policy.Snapshot) map[identity.NumericIdentity]bool {
	in := make(map[identity.NumericIdentity]bool, len(snap.Endpoints))
	for _, ep := range snap.Endpoints {
		in[ep.Identity] = true
	}
	for _, e := range snap.IPCache.Entries() {
		in[e.Identity] = true
	}
	return in
}

// collectIdentities frees the identities that snap (the one just pushed
// into the datapath) no longer uses and that have been unused for the
// grace period; references taken with Allocator.Acquire keep theirs. The
// freed numbers leave the persisted identities and are reused.
func (n *node) collectIdentities(snap *policy.Snapshot) {
	// The agent pushes whole snapshots and never polls the repository's
	// change log: drain it, or it keeps every endpoint key and selector
	// ever changed. (A future consumer of Changes must take this over.)
	n.repo.Changes()
	in := identitiesInUse(snap)
	n.mu.Lock()
	n.inUse = in
	n.mu.Unlock()
	freed := n.repo.Allocator().Sweep(identity.SweepOptions{
		InUse: func(id identity.NumericIdentity) bool { return in[id] },
		Grace: n.identityGrace,
	})
	if len(freed) > 0 {
		n.log.Debug("identities freed", "count", len(freed), "first", freed[0])
	}
	if len(freed) >= 100 {
		// Many identities went at once (their labels, selector
		// memberships, ipcache entries): give the memory back now
		// rather than keep the agent's RSS at its peak.
		debug.FreeOSMemory()
	}
}

// lastInUse is what the last datapath sync used (nil before the first).
func (n *node) lastInUse() map[identity.NumericIdentity]bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.inUse
}

// Defaults of the cluster identity collection (Cilium's operator:
// --identity-gc-interval 15m, and an unused identity goes after a
// heartbeat timeout of about as long).
const (
	defaultIdentityGCInterval = 15 * time.Minute
	defaultIdentityGCGrace    = 15 * time.Minute
)

// collectClusterIdentities deletes, every interval (with up to 10%
// jitter, so the agents do not all list at once), the CiliumIdentity
// objects no pod of the cluster has used for grace: what Cilium's
// operator does, done here by every agent (Collect is safe run by several
// at once: an object is deleted only if unchanged since it was marked
// unused). In use is what this agent's last sync used: its endpoints and
// its ipcache, which holds every pod of the cluster with an address.
// RunKubernetes starts it after the first reconcile, when that covers the
// whole cluster.
func (k *kubeAgent) collectClusterIdentities(ctx context.Context, num *k8sidentity.Numbering, interval, grace time.Duration) {
	for {
		wait := interval + time.Duration(rand.Int64N(int64(interval)/10+1))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		in := k.node.lastInUse()
		if in == nil {
			continue
		}
		deleted, err := num.Collect(ctx, k8sidentity.CollectOptions{
			InUse: func(id identity.NumericIdentity) bool { return in[id] },
			Grace: grace,
		})
		if err != nil && ctx.Err() == nil {
			k.log.Warn("CiliumIdentity collection", "error", err, "deleted", len(deleted))
			continue
		}
		if len(deleted) > 0 {
			k.log.Info("unused CiliumIdentities deleted", "count", len(deleted), "first", deleted[0])
		}
	}
}
