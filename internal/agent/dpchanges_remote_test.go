package agent

import (
	"net/netip"
	"testing"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy"
)

// TestIPCacheRemoteNodes: the other nodes' addresses are remote-node,
// this node's is host, and a change of the node list rebuilds the ipcache.
func TestIPCacheRemoteNodes(t *testing.T) {
	repo := policy.NewRepository(policy.Options{Allocator: identity.NewAllocator()})
	snap := repo.Snapshot()
	n := &node{nodeIP: netip.MustParseAddr("172.30.0.11"),
		remoteNodes: []netip.Addr{netip.MustParseAddr("172.30.0.12"), netip.MustParseAddr("172.30.0.13")}}
	ipc, changed := n.datapathIPCache(snap)
	if !changed {
		t.Fatal("first ipcache not marked changed")
	}
	for addr, want := range map[string]identity.NumericIdentity{
		"172.30.0.11": identity.Host, "172.30.0.12": identity.RemoteNode, "172.30.0.13": identity.RemoteNode,
	} {
		a := netip.MustParseAddr(addr)
		if got, ok := ipc[netip.PrefixFrom(a, 32)]; !ok || got != want {
			t.Errorf("%s: identity %v (present %v), want %v", addr, got, ok, want)
		}
	}
	n.pushed = dpPushed{ipcSrc: snap.IPCache, nodeIP: n.nodeIP, remoteNodes: n.remoteNodes, ipc: ipc}
	if _, changed := n.datapathIPCache(snap); changed {
		t.Error("same state: ipcache marked changed")
	}
	n.remoteNodes = n.remoteNodes[:1]
	ipc, changed = n.datapathIPCache(snap)
	if !changed {
		t.Fatal("a node left: ipcache not rebuilt")
	}
	if _, ok := ipc[netip.MustParsePrefix("172.30.0.13/32")]; ok {
		t.Error("a node that left keeps its remote-node entry")
	}
}
