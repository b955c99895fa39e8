package manifest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzDecode: Decode never panics, and every error names its document.
func FuzzDecode(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("..", "..", "testdata", "seed", "*.yaml"))
	for _, s := range seeds {
		if data, err := os.ReadFile(s); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: x, ports: [{containerPort: 80}]}]}\n"))
	f.Add([]byte("--- {apiVersion: cilium.io/v2, kind: CiliumNetworkPolicy, metadata: {name: p}, spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: 80}]}]}]}}\n...\n"))
	f.Add([]byte("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np1}\nspec: {podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, errs := Decode("fuzz.yaml", data)
		for _, e := range errs {
			if !strings.HasPrefix(e.Error(), "fuzz.yaml:doc ") || e.Reason == "" {
				t.Fatalf("bad error %q", e.Error())
			}
		}
		set := NewSet(objs...)
		for _, o := range objs {
			if o.Obj == nil || set.ObjectOf(o.Obj) == nil {
				t.Fatalf("object without payload: %s", o)
			}
		}
		_ = set.AllPods()
	})
}
