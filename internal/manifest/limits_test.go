package manifest

import (
	"strings"
	"testing"
)

// Objects over the API server's limits are refused naming file, object and
// limit; objects at the limits pass; stored objects can skip them.
func TestSizeLimits(t *testing.T) {
	annotated := func(n int) string {
		return "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: big\n  annotations:\n    note: \"" + strings.Repeat("a", n-3) + "\"\n"
	}
	policy := func(n int) string {
		return "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  namespace: demo\n  labels:\n    name: not-this\n  name: \"huge\"\nspec:\n  endpointSelector: {}\n  description: " + strings.Repeat("d", n) + "\n"
	}
	for _, c := range []struct {
		name, doc string
		want      []string // in the error; none: accepted
	}{
		{"annotations at 256 KiB", annotated(MaxTotalAnnotationSize - 1), nil},
		{"annotations over 256 KiB", annotated(MaxTotalAnnotationSize), []string{"f.yaml", "Namespace big", "metadata.annotations", "262144"}},
		{"object at 1.5 MiB", policy(MaxObjectBytes - 400), nil},
		{"object over 1.5 MiB", policy(MaxObjectBytes), []string{"f.yaml", "CiliumNetworkPolicy demo/huge", "1.5 MiB"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, errs := Decode("f.yaml", []byte(c.doc))
			if c.want == nil {
				if len(errs) > 0 && !strings.Contains(errs.Error(), "description") {
					t.Fatalf("refused: %v", errs)
				}
				return
			}
			if len(errs) != 1 {
				t.Fatalf("errors %v; want one", errs)
			}
			for _, w := range c.want {
				if !strings.Contains(errs[0].Error(), w) {
					t.Errorf("error %q lacks %q", errs[0].Error(), w)
				}
			}
			if _, errs := DecodeWith("f.yaml", []byte(c.doc), DecodeOptions{NoSizeLimits: true}); len(errs) > 0 && !strings.Contains(errs.Error(), "description") {
				t.Errorf("NoSizeLimits: %v", errs)
			}
		})
	}
}

func TestScanHeader(t *testing.T) {
	kind, ns, name := scanHeader([]byte("# c\nkind: Pod\nmetadata:\n  labels:\n    name: x\n  name: 'p'\n  namespace: demo\nspec: {}\n"))
	if kind != "Pod" || ns != "demo" || name != "p" {
		t.Errorf("scanHeader = %q %q %q", kind, ns, name)
	}
}
