package identity

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

func podLabels(app string) Labels {
	return PodLabels(map[string]string{"app": app}, PodContext{Namespace: "demo"})
}

// An unused identity is freed only after the grace period; one used again
// within it keeps its number; references and InUse keep identities.
func TestSweepGraceAndUse(t *testing.T) {
	a := NewAllocator()
	base := a.Len()
	t0 := time.Unix(1000, 0)
	web, _, _ := a.Allocate(podLabels("web"))
	db, _, _ := a.Allocate(podLabels("db"))
	held, _, _ := a.AcquireCIDR(netip.MustParsePrefix("198.18.0.1/32"))
	inUse := func(id NumericIdentity) bool { return id == db }
	if freed := a.Sweep(SweepOptions{InUse: inUse, Grace: time.Minute, Now: t0}); len(freed) != 0 {
		t.Fatalf("first sweep freed %v; want none (grace starts)", freed)
	}
	// web comes back within the grace period: same number, not freed.
	if again, created, _ := a.Allocate(podLabels("web")); again != web || created {
		t.Fatalf("web again: %d created=%v; want %d", again, created, web)
	}
	if freed := a.Sweep(SweepOptions{InUse: inUse, Grace: time.Minute, Now: t0.Add(2 * time.Minute)}); len(freed) != 0 {
		t.Fatalf("sweep after web came back freed %v", freed)
	}
	freed := a.Sweep(SweepOptions{InUse: inUse, Grace: time.Minute, Now: t0.Add(4 * time.Minute)})
	if len(freed) != 1 || freed[0] != web {
		t.Fatalf("freed %v; want [%d] (db in use, the CIDR referenced)", freed, web)
	}
	if _, ok := a.Lookup(web); ok {
		t.Error("freed identity still has labels")
	}
	if _, ok := a.Lookup(held); !ok {
		t.Error("referenced identity freed")
	}
	if err := a.Release(held); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(held); err == nil {
		t.Error("second Release of one reference: no error")
	}
	a.Sweep(SweepOptions{Now: t0.Add(5 * time.Minute)})
	if a.Len() != base {
		t.Errorf("after everything was released and swept: %d identities; want the %d reserved", a.Len(), base)
	}
	// Numbering came back to the start: the next label set gets the first
	// cluster number again.
	if id, _, _ := a.Allocate(podLabels("new")); id != MinCluster {
		t.Errorf("first allocation after a full sweep: %d; want %d", id, MinCluster)
	}
}

// Freed numbers are reused lowest first; numbers in use never change.
func TestSweepReusesNumbers(t *testing.T) {
	a := NewAllocator()
	ids := map[string]NumericIdentity{}
	for i := 0; i < 5; i++ {
		name := fmt.Sprint("app", i)
		ids[name], _, _ = a.Allocate(podLabels(name))
	}
	keep := map[NumericIdentity]bool{ids["app0"]: true, ids["app2"]: true, ids["app4"]: true}
	a.Sweep(SweepOptions{InUse: func(id NumericIdentity) bool { return keep[id] }})
	x, _, _ := a.Allocate(podLabels("x"))
	y, _, _ := a.Allocate(podLabels("y"))
	z, _, _ := a.Allocate(podLabels("z"))
	if x != ids["app1"] || y != ids["app3"] || z != ids["app4"]+1 {
		t.Errorf("after freeing app1 and app3: x=%d y=%d z=%d; want %d %d %d", x, y, z, ids["app1"], ids["app3"], ids["app4"]+1)
	}
	for name, id := range ids {
		if keep[id] {
			if got, _ := a.LookupLabels(podLabels(name)); got != id {
				t.Errorf("%s moved from %d to %d", name, id, got)
			}
		}
	}
}

// Restore keeps the numbers of identities in use across restarts; a
// restored identity unused by the new run is freed by its sweeps.
func TestRestoredUnusedIsSwept(t *testing.T) {
	a := NewAllocator()
	if err := a.Restore(MinCluster+2, podLabels("a")); err != nil {
		t.Fatal(err)
	}
	if err := a.Restore(MinCluster+5, podLabels("b")); err != nil {
		t.Fatal(err)
	}
	b := MinCluster + 5
	freed := a.Sweep(SweepOptions{InUse: func(id NumericIdentity) bool { return id == b }})
	if len(freed) != 1 || freed[0] != MinCluster+2 {
		t.Fatalf("freed %v; want [%d]", freed, MinCluster+2)
	}
	if id, _ := a.LookupLabels(podLabels("b")); id != b {
		t.Errorf("identity in use moved to %d", id)
	}
	if id, _, _ := a.Allocate(podLabels("c")); id != MinCluster+2 {
		t.Errorf("new label set got %d; want the freed %d", id, MinCluster+2)
	}
}
