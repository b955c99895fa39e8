package agent

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/bulwark-net/bulwark/internal/fqdn"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/proxy"
	dnsproxy "github.com/bulwark-net/bulwark/internal/proxy/dns"
)

// A flood of unique names through the agent's FQDN hook (real datapath)
// keeps the name cache, the repository's learned names and the datapath's
// ipcache within the cache's bounds, and the heap with them. The names
// resolve to a bounded set of addresses (a flood of random subdomains):
// with an unbounded set, each new address also costs an identity, which
// the allocator keeps until it can release identities (see setFQDNs).
func TestFQDNFloodBounded(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (BPF maps)")
	}
	const perEndpoint, endpoints = 300, 2
	n, l := benchNode(t, fqdn.Options{MaxNamesPerEndpoint: perEndpoint})
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	flood := func(from, to int) {
		for i := from; i < to; i++ {
			a := dnsproxy.Answer{Name: fmt.Sprintf("u%d.flood.test.", i), TTL: 3600,
				IPs: []netip.Addr{netip.AddrFrom4([4]byte{100, 64, byte(i % 1000 >> 8), byte(i % 1000)})}}
			if err := l.Learn(context.Background(), proxy.Flow{}, []uint32{uint32(1 + i%endpoints)}, a); err != nil {
				t.Fatal(err)
			}
		}
	}
	flood(0, 2000)
	before := heap()
	flood(2000, 10000)
	after := heap()
	entries, addrs := l.cache.Len()
	names := len(n.repo.FQDNs())
	ipcache := 0
	n.repo.Snapshot().IPCache.Range(func(p netip.Prefix, _ identity.NumericIdentity) {
		if p.Addr().Is4() && p.Bits() == 32 {
			ipcache++
		}
	})
	if entries > perEndpoint*endpoints || addrs > perEndpoint*endpoints || names > perEndpoint*endpoints || ipcache > perEndpoint*endpoints {
		t.Fatalf("after 10000 unique names: cache %d entries / %d addresses, repository %d names, ipcache %d host prefixes; bound %d",
			entries, addrs, names, ipcache, perEndpoint*endpoints)
	}
	if names < perEndpoint*endpoints/2 {
		t.Fatalf("only %d names kept: the bound evicts too much", names)
	}
	if after > before+16<<20 {
		t.Fatalf("heap grew from %d to %d bytes while the learned state stayed bounded", before, after)
	}
	t.Logf("cache %d entries, repository %d names, ipcache %d host prefixes; heap %d -> %d bytes", entries, names, ipcache, before, after)
}

// Two pods learning the same address share its identity.
func TestFQDNIdentityShared(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (BPF maps)")
	}
	n, l := benchNode(t)
	ip := netip.MustParseAddr("100.64.9.9")
	for ep, name := range map[uint32]string{1: "a.proxy.bench.test.", 2: "b.other.test."} {
		if err := l.Learn(context.Background(), proxy.Flow{}, []uint32{ep}, dnsproxy.Answer{Name: name, IPs: []netip.Addr{ip}, TTL: 60}); err != nil {
			t.Fatal(err)
		}
	}
	id := n.repo.Snapshot().IPCache.Lookup(ip)
	if !id.IsLocal() {
		t.Fatalf("learned address has identity %v", id)
	}
	if got := n.syncedRevision(); got != n.repo.Revision() {
		t.Fatalf("datapath at revision %d, repository at %d after Learn returned", got, n.repo.Revision())
	}
}
