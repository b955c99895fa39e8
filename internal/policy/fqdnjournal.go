package policy

import (
	"net/netip"

	"github.com/bulwark-net/bulwark/internal/identity"
)

// maxJournal bounds the journal: a consumer that falls further behind
// gets a full snapshot instead (FQDNChangesSince answers not ok).
const maxJournal = 4096

// fqdnJournal records, per revision, what an update that only changed
// learned DNS addresses touched, so that a consumer holding an older
// revision can catch up in O(change) (FQDNChangesSince).
//
// Invariant: every revision in (from, revision] was made by SetFQDNs
// without changing any endpoint's policy, and has an entry in entries
// unless a consumer acknowledged it (FQDNChangesSince drops entries at or
// below the revision it is asked about).
type fqdnJournal struct {
	fqdnRun bool // the update in progress is a SetFQDNs
	from    uint64
	entries []journalEntry
	cur     journalEntry // of the update in progress
}

type journalEntry struct {
	rev   uint64
	addrs map[netip.Addr]struct{}
	ids   map[identity.NumericIdentity]struct{}
}

func (r *Repository) beginJournal() {
	r.cur = journalEntry{addrs: map[netip.Addr]struct{}{}, ids: map[identity.NumericIdentity]struct{}{}}
}

// endJournal records the update that made ch (not empty); any other kind
// of update restarts the journal at its revision.
func (r *Repository) endJournal(ch Change) {
	if !r.fqdnRun || len(ch.Endpoints) > 0 || len(ch.Removed) > 0 || len(r.entries) >= maxJournal {
		r.from, r.entries = r.revision, nil
		return
	}
	r.cur.rev = r.revision
	r.entries = append(r.entries, r.cur)
}

// learnedChanged records that the learned address a (identity id) was
// added or removed: its host entry in the ipcache changes.
func (r *Repository) learnedChanged(a netip.Addr, id identity.NumericIdentity) {
	if r.pendIPCacheLocal != nil {
		*r.pendIPCacheLocal = true
	}
	r.cur.addrs[a] = struct{}{}
	r.journalIDs(id)
	if r.ipcache != nil {
		if r.ipPending == nil {
			r.ipPending = map[netip.Addr]struct{}{}
		}
		r.ipPending[a] = struct{}{}
	}
}

func (r *Repository) journalIDs(ids ...identity.NumericIdentity) {
	for _, id := range ids {
		r.cur.ids[id] = struct{}{}
	}
}

// learnedHosts is the new host entries of ipPending's addresses, as
// buildIPCache would make them: a learned address's identity, else the
// CIDR prefix's, else none.
func (r *Repository) learnedHosts() map[netip.Prefix]overEntry {
	out := make(map[netip.Prefix]overEntry, len(r.ipPending))
	for a := range r.ipPending {
		p := netip.PrefixFrom(a, a.BitLen())
		if id, ok := r.fqdn.idOfIP[a]; ok {
			out[p] = overEntry{id: id}
		} else if id, ok := r.cidrIDs[p]; ok {
			out[p] = overEntry{id: id}
		} else {
			out[p] = overEntry{deleted: true}
		}
	}
	return out
}

// FQDNChanges is what changed since a revision when only learned DNS
// addresses did: the current snapshot, the learned addresses whose host
// entry may have changed and the identities whose selector membership
// may have changed.
type FQDNChanges struct {
	Snapshot   *Snapshot
	Addrs      []netip.Addr
	Identities []identity.NumericIdentity
}

// FQDNChangesSince returns the changes after revision rev, when every
// update since was SetFQDNs changing no endpoint policy (else ok is false:
// use Snapshot). Entries at or below rev are dropped: the caller holds
// them. One consumer only (the agent's datapath).
func (r *Repository) FQDNChangesSince(rev uint64) (ch FQDNChanges, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rev < r.from || rev > r.revision {
		return FQDNChanges{}, false
	}
	i := 0
	for i < len(r.entries) && r.entries[i].rev <= rev {
		i++
	}
	r.entries = r.entries[i:]
	addrs := map[netip.Addr]struct{}{}
	ids := map[identity.NumericIdentity]struct{}{}
	for _, e := range r.entries {
		for a := range e.addrs {
			addrs[a] = struct{}{}
		}
		for id := range e.ids {
			ids[id] = struct{}{}
		}
	}
	ch.Snapshot = r.snapshotLocked()
	for a := range addrs {
		ch.Addrs = append(ch.Addrs, a)
	}
	for id := range ids {
		ch.Identities = append(ch.Identities, id)
	}
	return ch, true
}
