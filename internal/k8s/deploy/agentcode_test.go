package deploy

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/bulwark-net/bulwark/internal/identity"
	k8sidentity "github.com/bulwark-net/bulwark/internal/k8s/identity"
	"github.com/bulwark-net/bulwark/internal/k8s/k8stest"
)

// checkAgentCodeAsServiceAccount runs the agent's own Kubernetes code with
// the chart's ServiceAccount's credentials (impersonated): the
// CiliumIdentity numbering (informer, create, the garbage collector's mark
// patch and delete), and the policy status writer's requests (server-side
// apply of the status subresource, and update). A verb missing from the
// ClusterRole fails here even if the list in checkAgentRBAC forgot it.
func checkAgentCodeAsServiceAccount(ctx context.Context, t *testing.T, c *k8stest.Cluster, objs []*unstructured.Unstructured) {
	t.Helper()
	sa := find(objs, "ServiceAccount")[0]
	cfg := rest.CopyConfig(c.Config)
	cfg.WarningHandler = rest.NoWarnings{}
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + sa.GetNamespace() + ":" + sa.GetName(),
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + sa.GetNamespace(), "system:authenticated"},
	}
	asAgent, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()

	// Identities: number a label set, then collect it as unused.
	n, err := k8sidentity.New(asAgent, k8sidentity.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(runCtx); err != nil {
		t.Fatalf("CiliumIdentity informer as the agent: %v", err)
	}
	ls := identity.PodLabels(map[string]string{"app": "deploy-" + sa.GetNamespace()},
		identity.PodContext{Namespace: "default", ServiceAccount: "default"})
	num, err := n.Number(ls)
	if err != nil {
		t.Fatalf("number an identity as the agent: %v", err)
	}
	poll := func(what string, cond func(context.Context) (bool, error)) {
		t.Helper()
		if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, cond); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	poll("the agent's informer learns its identity", func(context.Context) (bool, error) {
		got, ok := n.Lookup(ls)
		return ok && got == num, nil
	})
	inUse := func(x identity.NumericIdentity) bool { return x != num }
	t0 := time.Now()
	if _, err := n.Collect(ctx, k8sidentity.CollectOptions{InUse: inUse, Grace: time.Hour, Now: t0}); err != nil {
		t.Fatalf("mark an unused identity as the agent: %v", err)
	}
	poll("the agent's informer sees the mark", func(context.Context) (bool, error) { return n.Marked(num), nil })
	del, err := n.Collect(ctx, k8sidentity.CollectOptions{InUse: inUse, Grace: time.Hour, Now: t0.Add(time.Hour)})
	if err != nil || len(del) != 1 || del[0] != num {
		t.Fatalf("collect as the agent: deleted %v, %v; want [%d]", del, err, num)
	}

	// Policy status: the writer of node-a reports a CNP enforced.
	cnpGVR := schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	cnp, err := admin.Resource(cnpGVR).Namespace("default").Create(ctx, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
		"metadata": map[string]any{"name": "status-" + sa.GetNamespace()},
		"spec":     map[string]any{"endpointSelector": map[string]any{}, "ingress": []any{map[string]any{}}},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The status writer (internal/k8s/status) server-side applies the
	// status subresource; here the same request writes only the declared
	// "conditions" (Cilium v1.20.2's schema has no per-node "nodes" map,
	// see the report of this branch), then a read-modify-write update.
	ri := asAgent.Resource(cnpGVR).Namespace("default")
	body := `{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"` + cnp.GetName() +
		`","namespace":"default","uid":"` + string(cnp.GetUID()) + `"},"status":{"conditions":[{"type":"Valid","status":"True"}]}}`
	force := true
	if _, err := ri.Patch(ctx, cnp.GetName(), types.ApplyPatchType, []byte(body),
		metav1.PatchOptions{FieldManager: "bulwark-agent/node-a", Force: &force}, "status"); err != nil {
		t.Fatalf("apply a policy's status as the agent: %v", err)
	}
	got, err := ri.Get(ctx, cnp.GetName(), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get the policy as the agent: %v", err)
	}
	if err := unstructured.SetNestedSlice(got.Object, []any{map[string]any{"type": "Valid", "status": "False", "reason": "InvalidPolicy"}}, "status", "conditions"); err != nil {
		t.Fatal(err)
	}
	if _, err := ri.UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update a policy's status as the agent: %v", err)
	}
	if _, err := ri.Update(ctx, got, metav1.UpdateOptions{}); err == nil {
		t.Fatal("the agent updated a policy's spec: the ClusterRole grants only its status")
	}
}
