package agent

import (
	"net/netip"
	"slices"

	"github.com/bulwark-net/bulwark/internal/datapath"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/sandbox"
)

// dpPushed is what the last successful table push gave the datapath, so
// that the next push lists only what changed (datapath.Changes) and the
// datapath's work follows the change, not the node's state. Guarded by
// syncMu.
type dpPushed struct {
	// ipcSrc is the repository ipcache ipc was built from (immutable: the
	// same pointer, the same content); nodeIP the address added to it.
	ipcSrc      *policy.IPCache
	nodeIP      netip.Addr
	remoteNodes []netip.Addr
	ipc         map[netip.Prefix]identity.NumericIdentity
	// ports are the proxy ports the tables were compiled with.
	ports [2]uint32
}

// datapathIPCache returns the ipcache to push for snap, and whether it
// may differ from the last one pushed. While the repository's ipcache is
// the same object, the last map is pushed again (the datapath owns it and
// keeps it equal to what it holds).
func (n *node) datapathIPCache(snap *policy.Snapshot) (map[netip.Prefix]identity.NumericIdentity, bool) {
	if last := &n.pushed; last.ipc != nil && last.ipcSrc == snap.IPCache && last.nodeIP == n.nodeIP && slices.Equal(last.remoteNodes, n.remoteNodes) {
		return last.ipc, false
	}
	ipc := make(map[netip.Prefix]identity.NumericIdentity, n.ipcacheHint.Load()+2)
	snap.IPCache.Range(func(p netip.Prefix, id identity.NumericIdentity) { ipc[p] = id })
	n.ipcacheHint.Store(int64(len(ipc))) // sizes the next map (no rehash while it grows)
	// The other nodes' addresses are remote-node (Cilium's reserved
	// identity 6), not world; pod addresses the repository knows win.
	for _, a := range n.remoteNodes {
		p := netip.PrefixFrom(a, a.BitLen())
		if _, ok := ipc[p]; !ok {
			ipc[p] = identity.RemoteNode
		}
	}
	if n.nodeIP.IsValid() {
		ipc[netip.PrefixFrom(n.nodeIP, n.nodeIP.BitLen())] = identity.Host
	}
	ipc[netip.PrefixFrom(sandbox.Gateway, 32)] = identity.Host
	return ipc, true
}

// proxyPorts are what the datapath's ProxyPortFunc answers from.
func proxyPorts(l *l7Proxies) [2]uint32 {
	if l == nil {
		return [2]uint32{}
	}
	return [2]uint32{uint32(l.ln.Port()), l.dnsPort.Load()}
}

// datapathChanges lists what may differ between the last push (prev, the
// policies it gave) and this one: endpoints whose policy is another object
// (the repository's policies are immutable), all of them when the proxy
// ports moved; the whole ipcache when it was rebuilt.
func datapathChanges(prev, cur map[uint32]*resolved.EndpointPolicy, portsMoved, ipcacheChanged bool) datapath.Changes {
	ch := datapath.Changes{AllIPCache: ipcacheChanged}
	for id, pol := range cur {
		if old, ok := prev[id]; portsMoved || !ok || old != pol {
			ch.Endpoints = append(ch.Endpoints, id)
		}
	}
	for id := range prev {
		if _, ok := cur[id]; !ok {
			ch.Endpoints = append(ch.Endpoints, id)
		}
	}
	return ch
}
