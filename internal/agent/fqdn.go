package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/bulwark-net/bulwark/internal/fqdn"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/proxy"
	dnsproxy "github.com/bulwark-net/bulwark/internal/proxy/dns"
	"github.com/bulwark-net/bulwark/internal/sandbox"
)

// fqdnLearner is the agent's FQDN update hook (dnsproxy.LearnFunc): what
// the DNS proxy lets a pod learn goes into the name cache, the policy
// repository (identities, toFQDNs selector membership) and the datapath
// (ipcache, selector sets), synchronously, before the proxy releases the
// answer.
//
// Invariants:
//   - Learn returns only when the datapath has synced a repository
//     revision at least as new as the one holding the answer's addresses
//     (a concurrent Learn's sync counts: syncs coalesce). It takes the
//     node's sync lock only, never the agent's change lock: an apply in
//     progress delays an answer by one sync at most, and shutting down
//     (which holds the change lock while the proxies drain) cannot
//     deadlock with it.
//   - The repository's learned names are always the cache's union over
//     endpoints (SetFQDNs with the cache's addresses of each changed name).
//   - Restart: the cache is persisted (every second when changed, and on
//     stop) and restored into the repository before the first datapath
//     sync, so the restarted agent enforces what pods already learned.
type fqdnLearner struct {
	n     *node
	cache *fqdn.Cache
	path  string
	dirty atomic.Bool

	stopped atomic.Bool   // the node is closing: no more syncs
	publish chan struct{} // a sync happened: republish the event view

	syncCount atomic.Int64 // datapath syncs the FQDN path ran

	// lastLearn is the latency of the last Learn (ns), for status.
	lastLearn atomic.Int64
}

func (n *node) fqdnFile() string { return filepath.Join(n.paths.StateDir, "fqdn.json") }

// newFQDNLearner restores the persisted cache into the repository. Called
// before the node's first datapath sync.
func newFQDNLearner(n *node, opts fqdn.Options) *fqdnLearner {
	l := &fqdnLearner{n: n, cache: fqdn.New(opts), path: n.fqdnFile(), publish: make(chan struct{}, 1)}
	if err := l.cache.Load(l.path); err != nil {
		// Not fatal: pods re-resolve; until then their connections to
		// names they learned before are denied (fail closed).
		n.log.Warn("learned FQDNs not restored", "err", err)
		l.cache = fqdn.New(opts)
	}
	// Drop what expired while no agent ran, then restore the rest.
	l.cache.Expire(time.Now(), nil)
	all := l.cache.All()
	if len(all) > 0 {
		if _, err := n.repo.SetFQDNs(all); err != nil {
			n.log.Warn("learned FQDNs not restored", "err", err)
		} else {
			n.log.Info("learned FQDNs restored", "names", len(all))
		}
	}
	return l
}

// Learn implements dnsproxy.LearnFunc.
func (l *fqdnLearner) Learn(ctx context.Context, _ proxy.Flow, endpoints []uint32, a dnsproxy.Answer) error {
	start := time.Now()
	var names []string
	for _, ep := range endpoints {
		names = append(names, l.cache.Update(start, ep, a.Name, a.IPs, time.Duration(a.TTL)*time.Second)...)
	}
	if err := l.apply(names); err != nil {
		return err
	}
	l.dirty.Store(true)
	l.lastLearn.Store(int64(time.Since(start)))
	return ctx.Err()
}

// apply makes the repository's addresses of names the cache's, then waits
// until the datapath enforces the result.
func (l *fqdnLearner) apply(names []string) error {
	if len(names) == 0 {
		return nil
	}
	set := make(map[string][]netip.Addr, len(names))
	for _, nm := range names {
		set[nm] = l.cache.Addresses(nm)
	}
	if _, err := l.n.repo.SetFQDNs(set); err != nil {
		return fmt.Errorf("learn FQDN: %w", err)
	}
	return l.syncTo(l.n.repo.Revision())
}

// syncTo returns once the datapath holds revision rev or newer.
func (l *fqdnLearner) syncTo(rev uint64) error {
	if l.stopped.Load() {
		return errors.New("agent stopping")
	}
	synced, err := l.n.syncAtLeast(rev)
	if err != nil || !synced {
		return err
	}
	l.syncCount.Add(1)
	// The observer learns the new identities' labels right after, off
	// the DNS path (the L7 proxies' view was published by the sync).
	select {
	case l.publish <- struct{}{}:
	default:
	}
	return nil
}

// forgetEndpoint drops what a removed pod learned from the cache and the
// repository, without syncing the datapath (its caller, holding the
// change lock, does).
func (l *fqdnLearner) forgetEndpoint(ep uint32) {
	names := l.cache.ForgetEndpoint(ep)
	if len(names) == 0 {
		return
	}
	set := make(map[string][]netip.Addr, len(names))
	for _, nm := range names {
		set[nm] = l.cache.Addresses(nm)
	}
	if _, err := l.n.repo.SetFQDNs(set); err != nil {
		l.n.log.Warn("forget learned FQDNs", "endpoint", ep, "err", err)
	}
	l.dirty.Store(true)
}

// run expires addresses and persists the cache until ctx ends. An expired
// address stays while a tracked connection still uses it.
func (l *fqdnLearner) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.publish:
			l.n.publishEventView()
			continue
		case <-t.C:
		}
		if names := l.cache.Expire(time.Now(), l.inUse()); len(names) > 0 {
			if err := l.apply(names); err != nil {
				l.n.log.Error("expire learned FQDNs", "err", err)
			}
			l.dirty.Store(true)
		}
		// The numbering files are also written by syncs: each write
		// is a complete file renamed into place, the last one wins.
		if !l.stopped.Load() {
			l.save()
		}
	}
}

// inUse lists, on first use, the addresses of tracked connections.
func (l *fqdnLearner) inUse() func(netip.Addr) bool {
	var used map[netip.Addr]bool
	return func(a netip.Addr) bool {
		if used == nil {
			used = map[netip.Addr]bool{}
			flows, err := l.n.dp.Conntrack()
			if err != nil {
				l.n.log.Warn("conntrack for FQDN expiry", "err", err)
			}
			for _, f := range flows {
				if !f.Closing {
					used[f.Src.Unmap()], used[f.Dst.Unmap()] = true, true
				}
			}
		}
		return used[a]
	}
}

// save persists the cache and the numbering (identities of learned
// addresses) when something was learned or expired.
func (l *fqdnLearner) save() {
	if !l.dirty.Swap(false) {
		return
	}
	if err := l.cache.Save(l.path); err != nil {
		l.n.log.Warn("learned FQDNs not persisted", "err", err)
		l.dirty.Store(true)
	}
	l.n.persistNumbering()
}

// start runs the expiry loop. The returned function stops it (without
// waiting: node.close runs it with the agent's change lock held) and
// saves the cache.
func (l *fqdnLearner) start(ctx context.Context) func() {
	ctx, cancel := context.WithCancel(ctx)
	go l.run(ctx)
	return func() {
		l.stopped.Store(true)
		cancel()
		l.dirty.Store(true)
		l.save()
	}
}

// publishL7View gives the L7 proxies the synced state: the snapshot, and
// the policies and selectors the datapath was given.
func (n *node) publishL7View() {
	n.mu.Lock()
	snap := n.snap
	attached := maps.Clone(n.attached)
	dpPolicies, dpSelectors, dpLimits := n.dpPolicies, n.dpSelectors, n.dpLimits
	n.mu.Unlock()
	if n.l7 == nil || snap == nil {
		return
	}
	v := &l7View{snap: snap, ids: map[policy.EndpointKey]uint32{}, hostAddr: map[netip.Addr]bool{sandbox.Gateway: true},
		policies: dpPolicies, selectors: dpSelectors, limits: dpLimits, stages: map[stageKey]stageResult{}}
	if v.selectors == nil {
		v.selectors = snap.Selectors
	}
	if n.nodeIP.IsValid() {
		v.hostAddr[n.nodeIP] = true
	}
	for id, key := range attached {
		ns, name := splitKey(key)
		v.ids[policy.EndpointKey{Namespace: ns, Name: name}] = id
	}
	n.l7.policies.publish(v)
}
