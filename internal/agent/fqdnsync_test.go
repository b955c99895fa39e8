package agent

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"testing"

	"github.com/bulwark-net/bulwark/internal/proxy"
	dnsproxy "github.com/bulwark-net/bulwark/internal/proxy/dns"
)

// TestFQDNIncrementalSyncMatchesFull: names learned and forgotten through
// the FQDN path are pushed incrementally, the datapath holds each
// revision before Learn returns, and a full sync afterwards finds nothing
// to change (the incremental maps equal the full ones; the datapath's own
// test compares the maps entry by entry).
func TestFQDNIncrementalSyncMatchesFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (BPF maps)")
	}
	n, l := benchNode(t)
	ctx := context.Background()
	name := func(i int) string { return fmt.Sprintf("n%d.proxy.bench.test.", i) }
	for i := 0; i < 60; i++ {
		a := netip.AddrFrom4([4]byte{100, 64, 0, byte(i + 1)})
		if err := l.Learn(ctx, proxy.Flow{}, []uint32{1}, dnsproxy.Answer{Name: name(i), IPs: []netip.Addr{a}, TTL: 60}); err != nil {
			t.Fatal(err)
		}
		if got, want := n.syncedRevision(), n.repo.Revision(); got != want {
			t.Fatalf("Learn returned with the datapath at revision %d, repository at %d", got, want)
		}
		if i%5 == 4 { // a name expires
			if _, err := n.repo.SetFQDNs(map[string][]netip.Addr{name(i - 2): nil}); err != nil {
				t.Fatal(err)
			}
			if err := l.syncTo(n.repo.Revision()); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n.fqdnIncremental.Load() == 0 {
		t.Fatal("no FQDN update went the incremental way")
	}
	rev := n.dp.Revision()
	if err := n.loadTables(); err != nil {
		t.Fatal(err)
	}
	if n.dp.Revision() != rev {
		t.Fatalf("a full sync after incremental FQDN updates changed the datapath (revision %d -> %d)", rev, n.dp.Revision())
	}
}
