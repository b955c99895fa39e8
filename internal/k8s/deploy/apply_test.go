package deploy

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/bulwark-net/bulwark/internal/k8s/k8stest"
)

const fieldManager = "bulwark-deploy-test"

// applier applies objects with server-side apply through the dynamic
// client, mapping kinds to resources by the server's discovery.
type applier struct {
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func newApplier(t *testing.T, cfg *rest.Config, client kubernetes.Interface) *applier {
	t.Helper()
	// Cilium's CRD schemas use formats the API server warns it does not
	// check (idn-hostname); the warnings are not this test's findings.
	cfg = rest.CopyConfig(cfg)
	cfg.WarningHandler = rest.NoWarnings{}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &applier{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(client.Discovery()))}
}

func (a *applier) resource(u *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := u.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", gvk.Kind, u.GetName(), err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		if u.GetNamespace() == "" {
			return nil, fmt.Errorf("%s %s: namespaced but rendered without a namespace", gvk.Kind, u.GetName())
		}
		return a.dyn.Resource(m.Resource).Namespace(u.GetNamespace()), nil
	}
	if u.GetNamespace() != "" {
		return nil, fmt.Errorf("%s %s: cluster-scoped but rendered in namespace %s", gvk.Kind, u.GetName(), u.GetNamespace())
	}
	return a.dyn.Resource(m.Resource), nil
}

// apply server-side applies u; dryRun asks the server to run every
// admission and validation step without persisting (dryRun=All).
func (a *applier) apply(ctx context.Context, u *unstructured.Unstructured, dryRun bool) (*unstructured.Unstructured, error) {
	r, err := a.resource(u)
	if err != nil {
		return nil, err
	}
	opts := metav1.ApplyOptions{FieldManager: fieldManager, Force: true}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	out, err := r.Apply(ctx, u.GetName(), u, opts)
	if err != nil {
		return nil, fmt.Errorf("apply %s %s/%s (dry run %v): %w", u.GetKind(), u.GetNamespace(), u.GetName(), dryRun, err)
	}
	return out, nil
}

// TestChartAppliesToTheAPIServer applies the plain manifests (defaults,
// kube-system) and the chart rendered with the chained values (another
// release and namespace) to a real kube-apiserver: first every object as a
// server-side dry run, then for real (CRDs first, waiting until they are
// Established). The created objects must reference each other, and the
// agent's ServiceAccount must be allowed exactly what the agent does.
func TestChartAppliesToTheAPIServer(t *testing.T) {
	c := k8stest.Start(t, k8stest.Options{ControllerManager: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := newApplier(t, c.Config, c.Client)

	plain, err := os.ReadFile(manifestFile)
	if err != nil {
		t.Fatal(err)
	}
	plainObjs, err := Objects(plain)
	if err != nil {
		t.Fatalf("%s: %v", manifestFile, err)
	}
	_, chainedObjs := render(t, Options{ReleaseName: "bulwark-chained", Namespace: "bulwark-test", Values: chainedValues()})
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bulwark-test"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A node without a kubelet, tainted as a control-plane node: the
	// DaemonSet controller must still give it an agent pod.
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{"kubernetes.io/os": "linux"}},
		Spec:       corev1.NodeSpec{Taints: []corev1.Taint{{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoSchedule}}},
	}
	if _, err := c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	for _, set := range []struct {
		name    string
		objs    []*unstructured.Unstructured
		chained bool
	}{{"plain manifests", plainObjs, false}, {"chained", chainedObjs, true}} {
		t.Run(set.name, func(t *testing.T) {
			checkRendered(t, set.objs, set.chained)
			crds := find(set.objs, "CustomResourceDefinition")
			if len(crds) == 0 {
				t.Fatal("the chart renders no CRDs")
			}
			// Dry run of everything: CRDs and the objects that do not
			// depend on them are validated and admitted by the server.
			for _, u := range set.objs {
				if _, err := a.apply(ctx, u, true); err != nil {
					t.Error(err)
				}
			}
			if t.Failed() {
				return
			}
			// For real: CRDs, Established, then the rest.
			for _, u := range crds {
				if _, err := a.apply(ctx, u, false); err != nil {
					t.Fatal(err)
				}
			}
			for _, u := range crds {
				waitEstablished(ctx, t, a, u.GetName())
			}
			a.mapper.Reset()
			for _, u := range set.objs {
				if u.GetKind() == "CustomResourceDefinition" {
					continue
				}
				if _, err := a.apply(ctx, u, false); err != nil {
					t.Fatal(err)
				}
			}
			checkCreated(ctx, t, c.Client, set.objs)
			checkAgentPod(ctx, t, c.Client, set.objs, node.Name)
			checkAgentRBAC(ctx, t, c, a, set.objs)
			checkAgentCodeAsServiceAccount(ctx, t, c, set.objs)
		})
	}
}

func waitEstablished(ctx context.Context, t *testing.T, a *applier, name string) {
	t.Helper()
	crdRes := a.dyn.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		u, err := crdRes.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("CRD %s not Established: %v", name, err)
	}
}

// checkCreated reads the objects back from the server: the DaemonSet's
// ServiceAccount and ConfigMap exist where it runs, with the keys its
// environment reads, and the binding's ClusterRole exists.
func checkCreated(ctx context.Context, t *testing.T, client kubernetes.Interface, objs []*unstructured.Unstructured) {
	t.Helper()
	dsObj := find(objs, "DaemonSet")[0]
	ds, err := client.AppsV1().DaemonSets(dsObj.GetNamespace()).Get(ctx, dsObj.GetName(), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	spec := ds.Spec.Template.Spec
	if _, err := client.CoreV1().ServiceAccounts(ds.Namespace).Get(ctx, spec.ServiceAccountName, metav1.GetOptions{}); err != nil {
		t.Errorf("the DaemonSet's ServiceAccount: %v", err)
	}
	for _, e := range spec.Containers[0].Env {
		if e.ValueFrom == nil || e.ValueFrom.ConfigMapKeyRef == nil {
			continue
		}
		ref := e.ValueFrom.ConfigMapKeyRef
		cm, err := client.CoreV1().ConfigMaps(ds.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			t.Errorf("env %s: ConfigMap: %v", e.Name, err)
			continue
		}
		if _, ok := cm.Data[ref.Key]; !ok {
			t.Errorf("env %s: ConfigMap %s has no key %q", e.Name, ref.Name, ref.Key)
		}
	}
	if spec.PriorityClassName != "" {
		if _, err := client.SchedulingV1().PriorityClasses().Get(ctx, spec.PriorityClassName, metav1.GetOptions{}); err != nil {
			t.Errorf("priority class: %v", err)
		}
	}
	crbObj := find(objs, "ClusterRoleBinding")[0]
	crb, err := client.RbacV1().ClusterRoleBindings().Get(ctx, crbObj.GetName(), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.RbacV1().ClusterRoles().Get(ctx, crb.RoleRef.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("the binding's ClusterRole: %v", err)
	}
}

// access is one request the agent makes (or must not be able to make).
type access struct {
	group, resource, subresource, verb string
}

func (x access) String() string {
	r := x.resource
	if x.subresource != "" {
		r += "/" + x.subresource
	}
	if x.group != "" {
		r += "." + x.group
	}
	return x.verb + " " + r
}

// checkAgentRBAC asks the API server's authorizer, as the agent's
// ServiceAccount, for every request the agent makes (allowed) and for
// neighbouring ones it must not make (denied), then makes a few of them
// for real, impersonating the ServiceAccount.
func checkAgentRBAC(ctx context.Context, t *testing.T, c *k8stest.Cluster, a *applier, objs []*unstructured.Unstructured) {
	t.Helper()
	sa := find(objs, "ServiceAccount")[0]
	user := "system:serviceaccount:" + sa.GetNamespace() + ":" + sa.GetName()
	groups := []string{"system:serviceaccounts", "system:serviceaccounts:" + sa.GetNamespace(), "system:authenticated"}
	var allowed []access
	for _, r := range []string{"pods", "namespaces", "nodes", "services"} {
		for _, v := range []string{"get", "list", "watch"} {
			allowed = append(allowed, access{"", r, "", v})
		}
	}
	for _, v := range []string{"get", "list", "watch"} {
		allowed = append(allowed,
			access{"discovery.k8s.io", "endpointslices", "", v},
			access{"networking.k8s.io", "networkpolicies", "", v},
			access{"cilium.io", "ciliumnetworkpolicies", "", v},
			access{"cilium.io", "ciliumclusterwidenetworkpolicies", "", v})
	}
	for _, v := range []string{"update", "patch"} {
		allowed = append(allowed,
			access{"cilium.io", "ciliumnetworkpolicies", "status", v},
			access{"cilium.io", "ciliumclusterwidenetworkpolicies", "status", v})
	}
	for _, v := range []string{"create", "get", "list", "watch", "update", "patch", "delete"} {
		allowed = append(allowed, access{"cilium.io", "ciliumidentities", "", v})
	}
	denied := []access{
		{"", "secrets", "", "get"}, {"", "secrets", "", "list"}, {"", "configmaps", "", "list"},
		{"", "pods", "", "create"}, {"", "pods", "", "delete"}, {"", "pods", "exec", "create"},
		{"", "nodes", "", "update"}, {"", "nodes", "status", "patch"}, {"", "services", "", "update"},
		{"networking.k8s.io", "networkpolicies", "", "create"},
		{"cilium.io", "ciliumnetworkpolicies", "", "update"}, {"cilium.io", "ciliumnetworkpolicies", "", "delete"},
		{"cilium.io", "ciliumclusterwidenetworkpolicies", "", "create"},
		{"cilium.io", "ciliumidentities", "", "deletecollection"},
		{"cilium.io", "ciliumendpoints", "", "list"},
		{"rbac.authorization.k8s.io", "clusterroles", "", "update"},
		{"apiextensions.k8s.io", "customresourcedefinitions", "", "create"},
	}
	check := func(x access, want bool) {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user, Groups: groups,
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Group: x.group, Resource: x.resource, Subresource: x.subresource, Verb: x.verb, Namespace: "default",
			},
		}}
		got, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("SubjectAccessReview %s: %v", x, err)
		}
		if got.Status.Allowed != want {
			t.Errorf("%s may %s: %v, want %v (%s)", user, x, got.Status.Allowed, want, got.Status.Reason)
		}
	}
	for _, x := range allowed {
		check(x, true)
	}
	for _, x := range denied {
		check(x, false)
	}

	// Real requests as the ServiceAccount.
	cfg := rest.CopyConfig(c.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
	as, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := as.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list pods in every namespace as the agent: %v", err)
	}
	if _, err := as.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list EndpointSlices as the agent: %v", err)
	}
	if _, err := as.CoreV1().Secrets(sa.GetNamespace()).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list secrets as the agent: %v, want Forbidden", err)
	}
	asDyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cnp := schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	if _, err := asDyn.Resource(cnp).List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list CiliumNetworkPolicies as the agent: %v", err)
	}
	ids := asDyn.Resource(schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumidentities"})
	name := fmt.Sprintf("%d", 70000+len(sa.GetNamespace()))
	id := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cilium.io/v2", "kind": "CiliumIdentity",
		"metadata":        map[string]any{"name": name},
		"security-labels": map[string]any{"k8s:app": "deploy-test", "k8s:io.kubernetes.pod.namespace": "default"},
	}}
	if _, err := ids.Create(ctx, id, metav1.CreateOptions{}); err != nil {
		t.Errorf("create a CiliumIdentity as the agent: %v", err)
	} else if err := ids.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Errorf("delete the CiliumIdentity as the agent: %v", err)
	}
	_, err = asDyn.Resource(cnp).Namespace("default").Create(ctx, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
		"metadata": map[string]any{"name": "deploy-test"},
		"spec":     map[string]any{"endpointSelector": map[string]any{}},
	}}, metav1.CreateOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("create a CiliumNetworkPolicy as the agent: %v, want Forbidden", err)
	}
	if err != nil && !strings.Contains(err.Error(), user) {
		t.Errorf("forbidden error %q does not name %s", err, user)
	}
}

// checkAgentPod waits for the DaemonSet controller's pod on node: the API
// server admitted it (the ServiceAccount exists, the priority class
// resolves, the security context and host paths validate), on that node,
// tolerating its taint.
func checkAgentPod(ctx context.Context, t *testing.T, client kubernetes.Interface, objs []*unstructured.Unstructured, node string) {
	t.Helper()
	dsObj := find(objs, "DaemonSet")[0]
	ds, err := client.AppsV1().DaemonSets(dsObj.GetNamespace()).Get(ctx, dsObj.GetName(), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	var pod *corev1.Pod
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := client.CoreV1().Pods(ds.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
		if err != nil {
			return false, err
		}
		for i := range pods.Items {
			pod = &pods.Items[i]
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		events, _ := client.CoreV1().Events(ds.Namespace).List(ctx, metav1.ListOptions{})
		var msgs []string
		for _, e := range events.Items {
			if e.InvolvedObject.Name == ds.Name {
				msgs = append(msgs, e.Reason+": "+e.Message)
			}
		}
		t.Fatalf("no agent pod from DaemonSet %s/%s: %v; events: %v", ds.Namespace, ds.Name, err, msgs)
	}
	if pod.Spec.Priority == nil || *pod.Spec.Priority != 2000001000 {
		t.Errorf("agent pod priority %v, want system-node-critical's 2000001000", pod.Spec.Priority)
	}
	if pod.Spec.ServiceAccountName != ds.Spec.Template.Spec.ServiceAccountName {
		t.Errorf("agent pod runs as %q", pod.Spec.ServiceAccountName)
	}
	// The controller pins the pod to its node by affinity.
	aff := pod.Spec.Affinity
	if aff == nil || aff.NodeAffinity == nil || aff.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil ||
		!strings.Contains(aff.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.String(), node) {
		t.Errorf("agent pod not placed on %s: affinity %v", node, aff)
	}
}
