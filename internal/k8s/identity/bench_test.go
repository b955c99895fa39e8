package identity_test

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/bulwark-net/bulwark/internal/identity"
	k8sidentity "github.com/bulwark-net/bulwark/internal/k8s/identity"
)

// BenchmarkNumberKnown: Number of a label set the cache already has.
func BenchmarkNumberKnown(b *testing.B) {
	e := start(b)
	n := e.numbering(b, k8sidentity.Options{})
	ls := pod("known")
	if _, err := n.Number(ls); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := n.Number(ls); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNumberNew: Number of label sets new to the cluster, each
// creating a CiliumIdentity through the real API server. Run with
// -benchtime=100000x for the 100k-identity figure; it reports the rate
// and the agent's heap per cached identity.
func BenchmarkNumberNew(b *testing.B) {
	e := start(b)
	n := e.numbering(b, k8sidentity.Options{})
	sets := make([]identity.Labels, b.N)
	for i := range sets {
		sets[i] = identity.PodLabels(map[string]string{"app": fmt.Sprint("bench-", i), "tier": "t"},
			identity.PodContext{Namespace: fmt.Sprint("ns-", i%100)})
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := n.Number(sets[i]); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	// Let the watch deliver the creations so that the cache holds them
	// all, as it would on every other agent.
	for deadline := time.Now().Add(2 * time.Minute); n.Len() < b.N && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "identities/s")
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(b.N), "heap-B/identity")
	b.ReportMetric(float64(n.Len()), "cached")
}
