package agent

import (
	"runtime/debug"
	"time"

	"github.com/bulwark-net/bulwark/internal/identity"
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
