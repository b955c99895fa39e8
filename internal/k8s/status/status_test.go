package status_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	corev1 "k8s.io/api/core/v1"

	"github.com/bulwark-net/bulwark/internal/k8s/crds"
	"github.com/bulwark-net/bulwark/internal/k8s/k8stest"
	"github.com/bulwark-net/bulwark/internal/k8s/status"
)

var (
	cnpGVR  = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	ccnpGVR = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"}
)

type env struct {
	c   *k8stest.Cluster
	dyn dynamic.Interface
	ctx context.Context
}

func start(t *testing.T) env {
	c := k8stest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := crds.Install(ctx, c.Config); err != nil {
		t.Fatal(err)
	}
	return env{c, dynamic.NewForConfigOrDie(c.Config), ctx}
}

func (e env) writer(t *testing.T, node string) *status.Writer {
	w, err := status.NewWriter(e.dyn, node, status.Options{Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	go w.Run(e.ctx)
	return w
}

func (e env) createPolicies(t *testing.T) (cnp, ccnp *unstructured.Unstructured) {
	if _, err := e.c.Client.CoreV1().Namespaces().Create(e.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	spec := map[string]any{
		"endpointSelector": map[string]any{"matchLabels": map[string]any{"app": "backend"}},
		"ingress": []any{map[string]any{"fromEndpoints": []any{map[string]any{"matchLabels": map[string]any{"app": "frontend"}}}}},
	}
	var err error
	cnp, err = e.dyn.Resource(cnpGVR).Namespace("demo").Create(e.ctx, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
		"metadata": map[string]any{"name": "frontend-to-backend", "namespace": "demo"},
		"spec":     spec,
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ccnp, err = e.dyn.Resource(ccnpGVR).Create(e.ctx, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
		"metadata": map[string]any{"name": "global"},
		"spec":     spec,
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return cnp, ccnp
}

type nodeStatus struct {
	OK                  bool   `json:"ok"`
	Enforcing           bool   `json:"enforcing"`
	Error               string `json:"error"`
	LastUpdated         string `json:"lastUpdated"`
	LocalPolicyRevision uint64 `json:"localPolicyRevision"`
}

type policyStatus struct {
	Nodes      map[string]nodeStatus `json:"nodes"`
	Conditions []struct {
		Type, Status, Reason, Message string
	} `json:"conditions"`
}

func readStatus(t *testing.T, e env, gvr schema.GroupVersionResource, ns, name string) policyStatus {
	t.Helper()
	var ri dynamic.ResourceInterface = e.dyn.Resource(gvr)
	if ns != "" {
		ri = e.dyn.Resource(gvr).Namespace(ns)
	}
	u, err := ri.Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var st policyStatus
	b, _ := json.Marshal(u.Object["status"])
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// waitFor polls the policy's status until ok accepts it.
func waitFor(t *testing.T, e env, gvr schema.GroupVersionResource, ns, name, what string, ok func(policyStatus) bool) policyStatus {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var st policyStatus
	for time.Now().Before(deadline) {
		if st = readStatus(t, e, gvr, ns, name); ok(st) {
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s %s/%s: never %s; status %+v", gvr.Resource, ns, name, what, st)
	return st
}

func TestTwoNodesWriteOnePolicy(t *testing.T) {
	e := start(t)
	cnp, ccnp := e.createPolicies(t)
	a, b := e.writer(t, "node-a"), e.writer(t, "node-b")
	ref := status.PolicyRef{Kind: status.KindCNP, Namespace: "demo", Name: "frontend-to-backend", UID: cnp.GetUID()}
	cref := status.PolicyRef{Kind: status.KindCCNP, Name: "global", UID: ccnp.GetUID()}

	a.Set(ref, status.Status{OK: true, Enforcing: false, Error: "waiting for 1 endpoint", Revision: 3})
	a.Set(ref, status.Enforcing(4)) // the last Set of a batch wins
	b.Set(ref, status.Enforcing(9))
	a.Set(cref, status.Enforcing(4))
	b.Set(cref, status.Enforcing(9))
	// NetworkPolicy has no status: ignored.
	a.Set(status.PolicyRef{Kind: "NetworkPolicy", Namespace: "demo", Name: "x"}, status.Enforcing(1))

	both := func(st policyStatus) bool {
		return st.Nodes["node-a"].Enforcing && st.Nodes["node-b"].Enforcing
	}
	st := waitFor(t, e, cnpGVR, "demo", "frontend-to-backend", "enforcing on both nodes", both)
	if na := st.Nodes["node-a"]; !na.OK || na.LocalPolicyRevision != 4 || na.Error != "" || na.LastUpdated == "" {
		t.Errorf("node-a: %+v", na)
	}
	if nb := st.Nodes["node-b"]; nb.LocalPolicyRevision != 9 {
		t.Errorf("node-b: %+v", nb)
	}
	if len(st.Conditions) != 1 || st.Conditions[0].Type != "Valid" || st.Conditions[0].Status != "True" {
		t.Errorf("conditions %+v, want Valid=True", st.Conditions)
	}
	waitFor(t, e, ccnpGVR, "", "global", "enforcing on both nodes", both)

	// node-a finds the policy invalid; node-b's entry is untouched.
	a.Set(ref, status.Invalid(errors.New(`spec.ingress[0]: bad port "x"`)))
	st = waitFor(t, e, cnpGVR, "demo", "frontend-to-backend", "invalid on node-a", func(st policyStatus) bool {
		return st.Nodes["node-a"].Error != ""
	})
	if na := st.Nodes["node-a"]; na.OK || na.Enforcing || na.Error != `spec.ingress[0]: bad port "x"` {
		t.Errorf("node-a after Invalid: %+v", na)
	}
	if nb := st.Nodes["node-b"]; !nb.Enforcing || nb.LocalPolicyRevision != 9 {
		t.Errorf("node-b changed by node-a's write: %+v", nb)
	}
	if len(st.Conditions) != 1 || st.Conditions[0].Status != "False" || st.Conditions[0].Message == "" {
		t.Errorf("conditions %+v, want Valid=False with the reason", st.Conditions)
	}

	// node-a forgets it: only its entry goes.
	a.Forget(ref)
	st = waitFor(t, e, cnpGVR, "demo", "frontend-to-backend", "without node-a", func(st policyStatus) bool {
		_, has := st.Nodes["node-a"]
		return !has
	})
	if nb := st.Nodes["node-b"]; !nb.Enforcing {
		t.Errorf("node-b lost by node-a's Forget: %+v", st)
	}
}

// A policy deleted (or re-created under the same name) is never written
// with a stale status, and the writer does not keep retrying it.
func TestDeletedPolicyDropped(t *testing.T) {
	e := start(t)
	cnp, _ := e.createPolicies(t)
	w := e.writer(t, "node-a")
	ref := status.PolicyRef{Kind: status.KindCNP, Namespace: "demo", Name: cnp.GetName(), UID: cnp.GetUID()}
	if err := e.dyn.Resource(cnpGVR).Namespace("demo").Delete(e.ctx, cnp.GetName(), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// Re-created: a new UID; the old ref's write must not land on it.
	cnp.SetResourceVersion("")
	cnp.SetUID("")
	if _, err := e.dyn.Resource(cnpGVR).Namespace("demo").Create(e.ctx, cnp, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	w.Set(ref, status.Enforcing(1))
	deadline := time.Now().Add(30 * time.Second)
	for w.Pending() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if p := w.Pending(); p != 0 {
		t.Fatalf("%d writes still pending for a deleted policy", p)
	}
	if st := readStatus(t, e, cnpGVR, "demo", cnp.GetName()); len(st.Nodes) != 0 {
		t.Fatalf("the re-created policy got the old one's status: %+v", st)
	}
}

func TestNewWriterNeedsNode(t *testing.T) {
	if _, err := status.NewWriter(nil, "", status.Options{}); err == nil {
		t.Fatal("empty node name accepted")
	}
	if !status.Supports(status.KindCCNP) || status.Supports("NetworkPolicy") {
		t.Fatal("Supports")
	}
	if st := status.Invalid(fmt.Errorf("bad")); st.OK || st.Enforcing || st.Error != "bad" {
		t.Fatalf("Invalid: %+v", st)
	}
}
