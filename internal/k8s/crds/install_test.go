package crds_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	corev1 "k8s.io/api/core/v1"

	"github.com/bulwark-net/bulwark/internal/k8s/crds"
	"github.com/bulwark-net/bulwark/internal/k8s/k8stest"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// seedCiliumDocs returns every cilium.io document of the seed YAMLs.
func seedCiliumDocs(t *testing.T) []*unstructured.Unstructured {
	files, err := filepath.Glob(filepath.Join("..", "..", "..", "testdata", "seed", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("seed YAMLs: %v (%d files)", err, len(files))
	}
	var out []*unstructured.Unstructured
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
		for {
			var m map[string]any
			if err := dec.Decode(&m); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			u := &unstructured.Unstructured{Object: m}
			if m == nil || u.GroupVersionKind().Group != crds.Group {
				continue
			}
			out = append(out, u)
		}
	}
	return out
}

func resourceOf(t *testing.T, all []*apiextensionsv1.CustomResourceDefinition, kind string) (schema.GroupVersionResource, bool) {
	for _, c := range all {
		if c.Spec.Names.Kind == kind {
			return schema.GroupVersionResource{Group: crds.Group, Version: crds.Version, Resource: c.Spec.Names.Plural},
				c.Spec.Scope == apiextensionsv1.NamespaceScoped
		}
	}
	t.Fatalf("no CRD for kind %s", kind)
	return schema.GroupVersionResource{}, false
}

func TestInstallAndSeed(t *testing.T) {
	c := k8stest.Start(t)
	ctx := ctxT(t)
	for i := 0; i < 2; i++ { // the second run must be a no-op
		if err := crds.Install(ctx, c.Config); err != nil {
			t.Fatalf("install %d: %v", i+1, err)
		}
	}
	ext := apiextensionsclient.NewForConfigOrDie(c.Config)
	all, err := crds.All()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range all {
		got, err := ext.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, want.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Generation != 1 {
			t.Errorf("%s: generation %d after two installs, want 1 (the second install changed it)", want.Name, got.Generation)
		}
		if !equality.Semantic.DeepEqual(got.Spec.Versions, want.Spec.Versions) {
			t.Errorf("%s: served versions differ from All()", want.Name)
		}
	}

	docs := seedCiliumDocs(t)
	if len(docs) < 15 {
		t.Fatalf("found %d cilium.io seed documents, want at least 15", len(docs))
	}
	dyn := dynamic.NewForConfigOrDie(c.Config)
	kinds := map[string]int{}
	for _, u := range docs {
		gvr, namespaced := resourceOf(t, all, u.GetKind())
		kinds[u.GetKind()]++
		var ri dynamic.ResourceInterface = dyn.Resource(gvr)
		if namespaced {
			ns := u.GetNamespace()
			if ns == "" {
				ns = "default"
			}
			u.SetNamespace(ns)
			_, _ = c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
			ri = dyn.Resource(gvr).Namespace(ns)
		}
		if _, err := ri.Create(ctx, u, metav1.CreateOptions{FieldValidation: "Strict"}); err != nil {
			t.Fatalf("create %s %s/%s: %v", u.GetKind(), u.GetNamespace(), u.GetName(), err)
		}
		got, err := ri.Get(ctx, u.GetName(), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, field := range []string{"spec", "specs"} {
			want, _, _ := unstructured.NestedFieldNoCopy(u.Object, field)
			have, _, _ := unstructured.NestedFieldNoCopy(got.Object, field)
			wj, _ := json.Marshal(want)
			hj, _ := json.Marshal(have)
			if !bytes.Equal(wj, hj) {
				t.Errorf("%s %s/%s: %s read back differs:\n sent %s\n got  %s", u.GetKind(), u.GetNamespace(), u.GetName(), field, wj, hj)
			}
		}
	}
	for _, k := range []string{"CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"} {
		if kinds[k] == 0 {
			t.Errorf("no seed %s created", k)
		}
	}

	// What `kubectl get cnp -o wide` shows: the server's table columns.
	for _, res := range []string{"ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies"} {
		var tbl metav1.Table
		path := "/apis/cilium.io/v2/" + res
		raw, err := c.Client.CoreV1().RESTClient().Get().AbsPath(path).
			SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").DoRaw(ctx)
		if err != nil {
			t.Fatalf("%s as table: %v", path, err)
		}
		if err := json.Unmarshal(raw, &tbl); err != nil {
			t.Fatal(err)
		}
		var cols []string
		for _, col := range tbl.ColumnDefinitions {
			cols = append(cols, col.Name)
		}
		if got := strings.Join(cols, ","); got != "Name,Age,Valid,Reason" {
			t.Errorf("%s table columns %s, want Name,Age,Valid,Reason", res, got)
		}
		if len(tbl.Rows) == 0 {
			t.Errorf("%s table has no rows", res)
		}
	}
}

// A cluster that already has Cilium's CRDs keeps them: Install leaves a
// Cilium-installed CRD at the same schema version alone, and upgrades one
// at an older schema version.
func TestInstallOverCilium(t *testing.T) {
	c := k8stest.Start(t)
	ctx := ctxT(t)
	ext := apiextensionsclient.NewForConfigOrDie(c.Config).ApiextensionsV1().CustomResourceDefinitions()
	all, err := crds.All()
	if err != nil {
		t.Fatal(err)
	}
	cilium := map[string]*apiextensionsv1.CustomResourceDefinition{}
	for _, want := range all {
		cc := want.DeepCopy()
		delete(cc.Annotations, crds.ManagedAnnotation)
		cc.Spec.Versions[0].AdditionalPrinterColumns = cc.Spec.Versions[0].AdditionalPrinterColumns[:1]
		if cc.Name == crds.CCNP {
			cc.Labels[crds.SchemaVersionLabel] = "1.20.0" // an old Cilium
		}
		if _, err := ext.Create(ctx, cc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		cilium[cc.Name] = cc
	}
	if err := crds.Install(ctx, c.Config); err != nil {
		t.Fatal(err)
	}
	for _, want := range all {
		got, err := ext.Get(ctx, want.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		expect := cilium[want.Name]
		if want.Name == crds.CCNP {
			expect = want
		}
		if !equality.Semantic.DeepEqual(got.Spec.Versions, expect.Spec.Versions) {
			t.Errorf("%s: versions %v after install, want those of %s", want.Name, got.Spec.Versions[0].AdditionalPrinterColumns,
				map[bool]string{true: "Bulwark", false: "Cilium"}[expect == want])
		}
		if got.Labels[crds.SchemaVersionLabel] != crds.SchemaVersion {
			t.Errorf("%s: schema version %s", want.Name, got.Labels[crds.SchemaVersionLabel])
		}
	}
}

// A CRD with a cilium.io name that is not Cilium's and does not serve v2 is
// not replaced: Install fails naming it.
func TestInstallRefusesForeignCRD(t *testing.T) {
	c := k8stest.Start(t)
	ctx := ctxT(t)
	ext := apiextensionsclient.NewForConfigOrDie(c.Config).ApiextensionsV1().CustomResourceDefinitions()
	all, _ := crds.All()
	var cid *apiextensionsv1.CustomResourceDefinition
	for _, x := range all {
		if x.Name == crds.CID {
			cid = x.DeepCopy()
		}
	}
	cid.Labels, cid.Annotations = nil, nil
	cid.Spec.Versions[0].Name = "v1"
	if _, err := ext.Create(ctx, cid, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err := crds.Install(ctx, c.Config)
	if err == nil || !strings.Contains(err.Error(), crds.CID) || !strings.Contains(err.Error(), "does not serve") {
		t.Fatalf("install over a foreign %s: %v, want an error naming it", crds.CID, err)
	}
}
