package agent

import (
	"errors"
	"net/netip"

	"github.com/bulwark-net/bulwark/internal/datapath"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/sandbox"
)

// pushFQDN brings the datapath to the repository's revision in O(change)
// when every update since the last sync only changed learned DNS
// addresses (the FQDN path); syncMu held. done is false when it did not
// apply (a full sync is needed: other changes, rate limits, no previous
// sync) or failed (err; the datapath then needs a full sync).
//
// The datapath receives the same content a full pushTables would give it
// (TestIncrementalFQDNMatchesFullSync): host entries of the changed
// addresses as the snapshot's ipcache has them, except the node's and the
// gateway's, which pushTables pins to the host identity.
func (n *node) pushFQDN() (done bool, err error) {
	n.mu.Lock()
	synced, limits, prev := n.syncedRev, len(n.dpLimits), n.snap
	n.mu.Unlock()
	if limits > 0 || prev == nil {
		return false, nil // rate limits: selectors of every identity
	}
	ch, ok := n.repo.FQDNChangesSince(synced)
	if !ok {
		return false, nil
	}
	snap := ch.Snapshot
	u := datapath.IdentityUpdate{
		IPCache:    make(map[netip.Prefix]identity.NumericIdentity, len(ch.Addrs)),
		Identities: ch.Identities,
		Selectors:  snap.Selectors,
		Revision:   snap.Revision,
	}
	for _, a := range ch.Addrs {
		if a == n.nodeIP || a == sandbox.Gateway {
			continue
		}
		p := netip.PrefixFrom(a, a.BitLen())
		if id, ok := snap.IPCache.Exact(p); ok {
			u.IPCache[p] = id
		} else {
			u.Delete = append(u.Delete, p)
		}
	}
	if err := n.dp.UpdateIdentities(u); err != nil {
		if errors.Is(err, datapath.ErrFullSyncNeeded) {
			return false, nil
		}
		return false, err
	}
	n.mu.Lock()
	n.snap = snap
	n.dpSelectors = snap.Selectors
	n.syncedRev = snap.Revision
	n.mu.Unlock()
	n.fqdnIncremental.Add(1)
	return true, nil
}
