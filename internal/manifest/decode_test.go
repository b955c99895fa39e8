package manifest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/bulwark-net/bulwark/internal/policy/api"
)

func TestSplitAndSources(t *testing.T) {
	data := `# leading comment
---
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
# only a comment
---

apiVersion: v1
kind: Pod
metadata: {name: p}
spec: {containers: [{name: c, image: x}]}
--- {apiVersion: v1, kind: Namespace, metadata: {name: b}}
...
`
	objs, errs := Decode("f.yaml", []byte(data))
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	want := []struct {
		kind, ns, name string
		doc, line      int
	}{
		{"Namespace", "", "a", 0, 3},
		{"Pod", "default", "p", 1, 10},
		{"Namespace", "", "b", 2, 14},
	}
	if len(objs) != len(want) {
		t.Fatalf("got %d objects, want %d", len(objs), len(want))
	}
	for i, w := range want {
		o := objs[i]
		if o.Kind != w.kind || o.Namespace != w.ns || o.Name != w.name || o.Source.DocIndex != w.doc || o.Source.Line != w.line || o.Source.File != "f.yaml" {
			t.Errorf("obj %d = %s %s/%s %+v, want %+v", i, o.Kind, o.Namespace, o.Name, o.Source, w)
		}
	}
	if ns := objs[1].Obj.(*corev1.Pod).Namespace; ns != "default" {
		t.Errorf("pod namespace not defaulted: %q", ns)
	}
}

func TestErrorFormat(t *testing.T) {
	doc := "---\n---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: demo}\nspec:\n  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports:\n      - port: \"80\"\n        protcol: TCP\n"
	_, errs := Decode("dir/x.yaml", []byte(doc))
	if len(errs) != 1 {
		t.Fatalf("errors: %v", errs)
	}
	want := "dir/x.yaml:doc 0: CiliumNetworkPolicy demo/p: spec.ingress[0].toPorts[0].ports[0].protcol: unknown field"
	if got := errs[0].Error(); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if errs[0].Line != 12 {
		t.Errorf("line = %d, want 12", errs[0].Line)
	}
}

func TestDecodeCases(t *testing.T) {
	tests := []struct {
		name, doc string
		errField  string // "" = no error expected
		errMsg    string
		check     func(t *testing.T, o *Object)
	}{
		{"np policyTypes ingress only", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np1}\nspec:\n  podSelector: {}\n  ingress: [{}]\n", "", "",
			func(t *testing.T, o *Object) {
				np := o.Obj.(*networkingv1.NetworkPolicy)
				if len(np.Spec.PolicyTypes) != 1 || np.Spec.PolicyTypes[0] != networkingv1.PolicyTypeIngress || np.Namespace != "default" {
					t.Errorf("policyTypes %v ns %q", np.Spec.PolicyTypes, np.Namespace)
				}
			}},
		{"np policyTypes with egress", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np1, namespace: x}\nspec:\n  podSelector: {}\n  egress: [{ports: [{port: 53}]}]\n", "", "",
			func(t *testing.T, o *Object) {
				np := o.Obj.(*networkingv1.NetworkPolicy)
				if len(np.Spec.PolicyTypes) != 2 || np.Spec.PolicyTypes[1] != networkingv1.PolicyTypeEgress {
					t.Errorf("policyTypes %v", np.Spec.PolicyTypes)
				}
				if p := np.Spec.Egress[0].Ports[0].Protocol; p == nil || *p != corev1.ProtocolTCP {
					t.Errorf("port protocol not defaulted to TCP")
				}
			}},
		{"np explicit policyTypes kept", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np1}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n", "", "",
			func(t *testing.T, o *Object) {
				if pt := o.Obj.(*networkingv1.NetworkPolicy).Spec.PolicyTypes; len(pt) != 1 || pt[0] != networkingv1.PolicyTypeEgress {
					t.Errorf("policyTypes %v", pt)
				}
			}},
		{"ccnp namespace dropped", "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c, namespace: demo}\nspec: {endpointSelector: {}}\n", "", "",
			func(t *testing.T, o *Object) {
				if o.Namespace != "" || o.Obj.(*api.CiliumClusterwideNetworkPolicy).Namespace != "" || len(o.Warnings) != 1 || o.Warnings[0].Field != "metadata.namespace" {
					t.Errorf("ns %q warnings %v", o.Namespace, o.Warnings)
				}
			}},
		{"deployment replicas default", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {matchLabels: {a: b}}\n  template: {metadata: {labels: {a: b}}, spec: {containers: [{name: c, image: x, ports: [{containerPort: 80}]}]}}\n", "", "",
			func(t *testing.T, o *Object) {
				d := o.Obj.(*appsv1.Deployment)
				if *d.Spec.Replicas != 1 || d.Spec.Template.Spec.Containers[0].Ports[0].Protocol != corev1.ProtocolTCP {
					t.Errorf("defaults not applied")
				}
			}},
		{"service target port default", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n", "", "",
			func(t *testing.T, o *Object) {
				p := o.Obj.(*corev1.Service).Spec.Ports[0]
				if p.TargetPort.IntVal != 80 || p.Protocol != corev1.ProtocolTCP {
					t.Errorf("service port %+v", p)
				}
			}},
		{"unsupported kind kept", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n", "", "",
			func(t *testing.T, o *Object) {
				u, ok := o.Obj.(*Unsupported)
				if !ok || u.Kind != "ConfigMap" || !strings.Contains(u.Note, "not modelled") {
					t.Errorf("got %#v", o.Obj)
				}
			}},
		{"cilium unsupported kind kept", "apiVersion: cilium.io/v2\nkind: CiliumEnvoyConfig\nmetadata: {name: c}\nspec: {anything: [1]}\n", "", "", nil},
		{"Node not a typo of Pod", "apiVersion: v1\nkind: Node\nmetadata: {name: n}\n", "", "", nil},
		{"port as number", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: 80}]}]}]\n", "", "",
			func(t *testing.T, o *Object) {
				if p := o.Obj.(*api.CiliumNetworkPolicy).Spec.Ingress[0].ToPorts[0].Ports[0].Port; p != "80" {
					t.Errorf("port %q", p)
				}
			}},
		{"label value bool", "apiVersion: v1\nkind: Namespace\nmetadata: {name: n, labels: {enforce: true}}\n", "metadata.labels[enforce]", "cannot use true (boolean) as a string", nil},
		{"yaml 1.1 boolean name", "apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n", "metadata.name", "cannot use false (boolean) as a string", nil},
		{"missing kind", "apiVersion: v1\nmetadata: {name: n}\n", "kind", "required", nil},
		{"missing apiVersion", "kind: Pod\nmetadata: {name: n}\n", "apiVersion", "required", nil},
		{"wrong group", "apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: n}\n", "apiVersion", "served as \"apps/v1\"", nil},
		{"kind case typo", "apiVersion: networking.k8s.io/v1\nkind: networkpolicy\nmetadata: {name: n}\n", "kind", "did you mean \"NetworkPolicy\"", nil},
		{"list", "- a\n- b\n", "", "not an object", nil},
		{"bad yaml", "a: [\n", "", "invalid YAML", nil},
		{"kind not string", "apiVersion: v1\nkind: [Pod]\n", "kind", "must be a string", nil},
		{"embedded struct name hidden", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {matchLabels: [a]}\n", "spec.endpointSelector.matchLabels", "cannot use a list as an object", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, errs := Decode("t.yaml", []byte(tt.doc))
			if tt.errMsg != "" {
				if len(errs) != 1 {
					t.Fatalf("want one error, got %v (objs %d)", errs, len(objs))
				}
				if errs[0].Field != tt.errField || !strings.Contains(errs[0].Reason, tt.errMsg) {
					t.Errorf("got %q, want field %q reason containing %q", errs[0].Error(), tt.errField, tt.errMsg)
				}
				return
			}
			if len(errs) != 0 || len(objs) != 1 {
				t.Fatalf("errs %v objs %d", errs, len(objs))
			}
			if tt.check != nil {
				tt.check(t, objs[0])
			}
		})
	}
}

func TestFilesAndLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(rel, content string) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ns := func(n string) string { return "apiVersion: v1\nkind: Namespace\nmetadata: {name: " + n + "}\n" }
	write("b.yaml", ns("b"))
	write("a/z.yml", ns("z"))
	write("a/c.json", `{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "c"}}`)
	write("notes.txt", "not a manifest")
	write(".git/x.yaml", ns("hidden"))
	write("bad.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: bad, nam: x}\n")

	files, err := Files(dir)
	if err != nil {
		t.Fatal(err)
	}
	var rel []string
	for _, f := range files {
		r, _ := filepath.Rel(dir, f)
		rel = append(rel, r)
	}
	if got := strings.Join(rel, ","); got != "a/c.json,a/z.yml,b.yaml,bad.yaml" {
		t.Errorf("files = %s", got)
	}
	set, errs, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Namespaces) != 3 || len(errs) != 1 || errs[0].Field != "metadata.nam" {
		t.Errorf("namespaces %d errs %v", len(set.Namespaces), errs)
	}
	if src, ok := set.SourceOf(set.Namespaces[0]); !ok || !strings.HasSuffix(src.File, "c.json") {
		t.Errorf("SourceOf = %+v %v", src, ok)
	}
	if _, err := LoadStrict(dir); err == nil {
		t.Error("LoadStrict accepted a bad document")
	}
	_, _, err = Load(filepath.Join(dir, "missing.yaml"))
	if err == nil || !strings.Contains(err.Error(), "missing.yaml: no such file or directory") {
		t.Errorf("missing file: %v", err)
	}
}

func TestWorkloadPods(t *testing.T) {
	set, errs, err := Load(seedDir(t))
	if err != nil || len(errs) != 0 {
		t.Fatal(err, errs)
	}
	pods := set.WorkloadPods()
	// frontend 2 + backend 2 + database 1.
	if len(pods) != 5 {
		t.Fatalf("got %d pods", len(pods))
	}
	p := pods[0]
	if p.Name != "frontend-0" || p.Namespace != "demo" || p.Labels["app"] != "frontend" || p.Annotations[AnnotationOwner] != "Deployment/frontend" {
		t.Errorf("pod %s/%s labels %v annotations %v", p.Namespace, p.Name, p.Labels, p.Annotations)
	}
	if len(set.AllPods()) != 5 {
		t.Error("AllPods")
	}
}
