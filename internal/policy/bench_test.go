package policy_test

import (
	"testing"

	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/policytest"
)

// Run: go test ./internal/policy -run XXX -bench . -benchmem
//
// BenchmarkResolveFull is the baseline: the whole standard state (10k
// pods, 1k label sets, 1k policies) loaded and resolved from scratch.
// BenchmarkIncrementalPolicyChange changes one policy of that state; its
// ns/op divided by the baseline's is the incremental cost ratio.

func BenchmarkResolveFull(b *testing.B) {
	st := policytest.Build(policytest.Standard)
	objs := st.Objects()
	b.ReportAllocs()
	for b.Loop() {
		repo := policy.NewRepository(policy.Options{})
		if _, err := repo.Upsert(objs...); err != nil {
			b.Fatal(err)
		}
		repo.Snapshot()
	}
}

func BenchmarkIncrementalPolicyChange(b *testing.B) {
	st := policytest.Build(policytest.Standard)
	repo := policy.NewRepository(policy.Options{})
	if _, err := repo.Upsert(st.Objects()...); err != nil {
		b.Fatal(err)
	}
	apps := policytest.Standard.LabelSets / policytest.Standard.Namespaces
	variants := []any{
		policytest.CNP(0, "ns-0", 0, apps, 8081),
		policytest.CNP(0, "ns-0", 0, apps, 8080),
	}
	// Sanity: the change recomputes the endpoints of one label set only.
	ch, err := repo.Upsert(variants[0])
	if err != nil {
		b.Fatal(err)
	}
	if n := len(ch.Endpoints); n == 0 || n > policytest.Standard.Pods/policytest.Standard.LabelSets {
		b.Fatalf("one policy change recomputed %d endpoints", n)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if _, err := repo.Upsert(variants[i%2]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkIncrementalChangeAndSnapshot adds taking the snapshot the
// datapath reads after the change.
func BenchmarkIncrementalChangeAndSnapshot(b *testing.B) {
	st := policytest.Build(policytest.Standard)
	repo := policy.NewRepository(policy.Options{})
	if _, err := repo.Upsert(st.Objects()...); err != nil {
		b.Fatal(err)
	}
	apps := policytest.Standard.LabelSets / policytest.Standard.Namespaces
	variants := []any{policytest.CNP(0, "ns-0", 0, apps, 8081), policytest.CNP(0, "ns-0", 0, apps, 8080)}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if _, err := repo.Upsert(variants[i%2]); err != nil {
			b.Fatal(err)
		}
		repo.Snapshot()
	}
}
