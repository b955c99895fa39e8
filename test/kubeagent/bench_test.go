package kubeagent

import (
	"context"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/k8s/source"
)

// BenchmarkPolicyToEnforced measures, on one node's agent in Kubernetes
// mode, the time from creating a CiliumNetworkPolicy in the API server to
// the agent reporting it loaded in the datapath's maps for every endpoint
// (status: the policy counted, every endpoint ready at the repository's
// revision), with 1000 pods (5 of them on this node, attached through
// bulwark-cni) and 200 policies in place. Reports p50/p99 and the heap of
// the test process (the agent, its informers and the test's clients).
func BenchmarkPolicyToEnforced(b *testing.B) {
	benchPolicyToEnforced(b, 1000, 200)
}

// BenchmarkPolicyToEnforced1kPolicies is the same with 1000 policies in
// place (the 1k pods / 1k policies).
func BenchmarkPolicyToEnforced1kPolicies(b *testing.B) {
	benchPolicyToEnforced(b, 1000, 1000)
}

func benchPolicyToEnforced(b *testing.B, nPods, nPolicies int) {
	tt := testing.TB(b)
	e := newEnv(tt)
	n := e.addNode()
	n.start()
	ctx := context.Background()
	cs := e.cluster.Client
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bench"}}, metav1.CreateOptions{})
	must(tt, err)
	e.serviceAccount("bench")
	const apps = 50
	local := 5
	for i := 0; i < local; i++ {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("local-%d", i), Namespace: "bench", Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%apps)}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "none"}}}}
		n.runPod(p, 80)
	}
	// The other pods run on another node: API objects with addresses.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	errs := make(chan error, nPods)
	for i := local; i < nPods; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("remote-%d", i), Namespace: "bench", Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%apps)}},
				Spec: corev1.PodSpec{NodeName: "elsewhere", Containers: []corev1.Container{{Name: "c", Image: "none"}}}}
			p, err := cs.CoreV1().Pods("bench").Create(ctx, p, metav1.CreateOptions{})
			if err != nil {
				errs <- err
				return
			}
			ip := fmt.Sprintf("10.250.%d.%d", i/250, i%250+1)
			p.Status.Phase, p.Status.PodIP, p.Status.PodIPs = corev1.PodRunning, ip, []corev1.PodIP{{IP: ip}}
			if _, err := cs.CoreV1().Pods("bench").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		tt.Fatal(err)
	}
	cnps := e.dyn.Resource(source.CNPResource).Namespace("bench")
	policy := func(name string, sel, from, port int) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
			"metadata": map[string]any{"name": name, "namespace": "bench"},
			"spec": map[string]any{
				"endpointSelector": map[string]any{"matchLabels": map[string]any{"app": fmt.Sprintf("app-%d", sel)}},
				"ingress": []any{map[string]any{
					"fromEndpoints": []any{map[string]any{"matchLabels": map[string]any{"app": fmt.Sprintf("app-%d", from)}}},
					"toPorts":       []any{map[string]any{"ports": []any{map[string]any{"port": fmt.Sprint(port), "protocol": "TCP"}}}},
				}},
			},
		}}
	}
	for i := 0; i < nPolicies; i++ {
		if _, err := cnps.Create(ctx, policy(fmt.Sprintf("p-%d", i), i%apps, (i+1)%apps, 1000+i), metav1.CreateOptions{}); err != nil {
			tt.Fatal(err)
		}
	}
	n.waitPolicies(nPolicies)
	c := agentapi.NewClient(n.paths.Socket)
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		want := nPolicies + i + 1
		start := time.Now()
		// Selects a local pod: its endpoint's maps change.
		if _, err := cnps.Create(ctx, policy(fmt.Sprintf("probe-%d", i), i%local, (i+7)%apps, 20000+i), metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		for {
			st, err := c.Status(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if st.Policies == want && st.Ready {
				break
			}
			if time.Since(start) > time.Minute {
				b.Fatalf("probe %d not enforced after a minute: %+v", i, st)
			}
			time.Sleep(500 * time.Microsecond)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	b.ReportMetric(float64(pct(0.50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "p99-ms")
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MB")
}
