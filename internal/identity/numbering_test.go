package identity

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// fixedNumbering numbers label sets from a table, as a cluster store would.
type fixedNumbering map[string]NumericIdentity

func (f fixedNumbering) Number(ls Labels) (NumericIdentity, error) {
	if n, ok := f[ls.String()]; ok {
		return n, nil
	}
	return 0, errors.New("store unreachable")
}

func TestClusterNumberingDecidesClusterIdentities(t *testing.T) {
	web := NewLabels(Label{SourceK8s, "app", "web"})
	db := NewLabels(Label{SourceK8s, "app", "db"})
	clash := NewLabels(Label{SourceK8s, "app", "clash"})
	a := NewClusterAllocator(fixedNumbering{web.String(): 4242, db.String(): 7, clash.String(): 4242})

	id, created, err := a.Allocate(web)
	if err != nil || id != 4242 || !created {
		t.Fatalf("Allocate(web) = %d, %v, %v; want 4242 from the numbering", id, created, err)
	}
	if id, _, _ := a.Allocate(web); id != 4242 {
		t.Fatalf("second Allocate(web) = %d", id)
	}
	if _, _, err := a.Allocate(db); err == nil || !strings.Contains(err.Error(), "outside") {
		t.Fatalf("a reserved number from the numbering must be refused, got %v", err)
	}
	if _, _, err := a.Allocate(clash); err == nil || !strings.Contains(err.Error(), "holds") {
		t.Fatalf("a number this node holds for another set must be refused, got %v", err)
	}
	if _, _, err := a.Allocate(NewLabels(Label{SourceK8s, "app", "new"})); err == nil {
		t.Fatal("a numbering error must fail the allocation")
	}
	// CIDR identities stay local.
	if id, _, err := a.AllocateCIDR(netip.MustParsePrefix("10.0.0.0/8")); err != nil || !id.IsLocal() {
		t.Fatalf("AllocateCIDR = %d, %v; want a local identity", id, err)
	}
}
