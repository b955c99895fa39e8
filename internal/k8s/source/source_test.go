package source

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/policy/api"
)

// As the API server serves it: the document plus server-set metadata and a
// status.
func served(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetUID("0d7b6c1e-0000-4000-8000-000000000001")
	u.SetResourceVersion("42")
	u.SetGeneration(3)
	u.Object["status"] = map[string]any{"nodes": map[string]any{"n1": map[string]any{"ok": true, "enforcing": true}}}
	return u
}

// The API server's copy of a seed policy decodes to what the sandbox's
// loader makes of the file.
func TestDecodeCiliumSameAsManifest(t *testing.T) {
	for _, f := range []string{"frontend-to-backend.yaml", "clusterwide-policy.yaml", "allow-dns.yaml"} {
		path := "../../../testdata/seed/" + f
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		want, errs := manifest.Decode(path, b)
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		docs := strings.Split(string(b), "\n---")
		var got []*manifest.Object
		for _, d := range docs {
			if strings.TrimSpace(strings.Join(nonComment(d), "")) == "" {
				continue
			}
			o, err := decodeCilium(served(t, d))
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			got = append(got, o)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d objects, want %d", f, len(got), len(want))
		}
		for i := range got {
			g, w := specOf(t, got[i].Obj), specOf(t, want[i].Obj)
			if !reflect.DeepEqual(g, w) {
				t.Errorf("%s doc %d: spec differs:\n got %#v\nwant %#v", f, i, g, w)
			}
			if got[i].Kind != want[i].Kind || got[i].Name != want[i].Name || got[i].Namespace != want[i].Namespace {
				t.Errorf("%s doc %d: %s, want %s", f, i, got[i], want[i])
			}
		}
	}
}

func nonComment(doc string) []string {
	var out []string
	for _, l := range strings.Split(doc, "\n") {
		if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "#") {
			out = append(out, l)
		}
	}
	return out
}

func specOf(t *testing.T, o any) any {
	switch p := o.(type) {
	case *api.CiliumNetworkPolicy:
		return []any{p.Spec, p.Specs}
	case *api.CiliumClusterwideNetworkPolicy:
		return []any{p.Spec, p.Specs}
	}
	t.Fatalf("%T is not a Cilium policy", o)
	return nil
}

// A policy the decoder refuses is an error naming the object and field.
func TestDecodeCiliumError(t *testing.T) {
	u := served(t, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad, namespace: demo}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints: "frontend"
`)
	_, err := decodeCilium(u)
	if err == nil {
		t.Fatal("decoded a policy whose fromEndpoints is a string")
	}
	for _, want := range []string{"CiliumNetworkPolicy demo/bad", "spec.ingress[0].fromEndpoints"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}
