package manifest

import (
	"strings"
	"testing"
)

func TestSetPolicyAnnotation(t *testing.T) {
	in := `apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny
  namespace: demo
  annotations:
    keep: "1"
spec:
  podSelector: {}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: cnp
  namespace: demo
spec:
  endpointSelector: {}
  ingressDeny:
  - fromEntities: [world]
`
	out, err := SetPolicyAnnotation([]byte(in), "policy.bulwark.io/audit", "true")
	if err != nil {
		t.Fatal(err)
	}
	objs, errs := Decode("x.yaml", out)
	if len(errs) > 0 {
		t.Fatalf("decode annotated stream: %v\n%s", errs, out)
	}
	if len(objs) != 3 {
		t.Fatalf("%d objects, want 3:\n%s", len(objs), out)
	}
	for _, o := range objs {
		ann := objectMeta(o.Obj).Annotations
		isPolicy := o.Kind != "Namespace"
		if got := ann["policy.bulwark.io/audit"]; (got == "true") != isPolicy {
			t.Errorf("%s %s: audit annotation %q", o.Kind, o.Name, got)
		}
		if o.Name == "deny" && ann["keep"] != "1" {
			t.Errorf("existing annotation lost: %v", ann)
		}
	}
	if !strings.HasPrefix(string(out), "apiVersion: v1\nkind: Namespace") {
		t.Errorf("a document that is not a policy changed:\n%s", out)
	}
}
