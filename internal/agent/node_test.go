package agent

import (
	"testing"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/sandbox"
)

func setOf(t *testing.T, docs ...agentapi.Document) *manifest.Set {
	t.Helper()
	return manifest.NewSet(decode(t, docs)...)
}

// check is the all-or-nothing gate of apply: what the sandbox or the
// engine cannot take is refused before anything changes.
func TestCheck(t *testing.T) {
	var n node
	seedSet := setOf(t, seedDocs(t, "sample-app.yaml", "default-deny.yaml", "allow-dns.yaml", "frontend-to-backend.yaml", "backend-to-database.yaml")...)
	if err := n.check(seedSet); err != nil {
		t.Fatalf("seed rejected: %v", err)
	}
	for name, doc := range map[string]string{
		"NodePort service": `apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80}]
`,
		"StatefulSet": `apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: demo}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, image: postgres}]}
`,
	} {
		set := setOf(t, agentapi.Document{Source: name + ".yaml", Data: []byte(doc)})
		if err := n.check(set); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

func TestDesiredPodSpecs(t *testing.T) {
	specs, errs := desiredPodSpecs(setOf(t, seedDocs(t, "sample-app.yaml")...))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	count := map[string]int{}
	for _, s := range specs {
		count[s.OwnerDeployment]++
		if s.Namespace != "demo" {
			t.Errorf("%s in namespace %q", s.Name, s.Namespace)
		}
	}
	if count["frontend"] != 2 || count["backend"] != 2 || count["database"] != 1 {
		t.Errorf("replicas %v, want frontend 2, backend 2, database 1", count)
	}
	// Stable names: the same input gives the same pods (what a restarted
	// agent relies on to find its pods).
	again, _ := desiredPodSpecs(setOf(t, seedDocs(t, "sample-app.yaml")...))
	for i := range specs {
		if specs[i].Name != again[i].Name {
			t.Errorf("pod name %s then %s", specs[i].Name, again[i].Name)
		}
	}
}

func TestPodObjectRolloutLabelsStayOutOfIdentities(t *testing.T) {
	p := sandbox.PodInfo{Namespace: "demo", Name: "web-1", Labels: map[string]string{"app": "web", "pod-template-hash": "abc"},
		Ports: []sandbox.ContainerPort{{Name: "http", Port: 80, Protocol: "TCP"}}}
	o := podObject(p)
	if o.Labels["pod-template-hash"] != "abc" || o.Labels["app"] != "web" {
		t.Errorf("labels %v", o.Labels)
	}
	o.Labels["app"] = "changed"
	if p.Labels["app"] != "web" {
		t.Error("podObject shares the pod's own labels")
	}
	if len(o.Spec.Containers) != 1 || o.Spec.Containers[0].Ports[0].Name != "http" || o.Status.PodIP != "" {
		t.Errorf("pod object %+v", o)
	}
	// The identity layer filters: two rollouts of a pod share an identity.
	repo := policy.NewRepository(policy.Options{})
	q := p
	q.Name, q.Labels = "web-2", map[string]string{"app": "web", "pod-template-hash": "def"}
	if _, err := repo.Upsert(podObject(p), podObject(q)); err != nil {
		t.Fatal(err)
	}
	eps := repo.Snapshot().Endpoints
	a, b := eps[policy.EndpointKey{Namespace: "demo", Name: "web-1"}], eps[policy.EndpointKey{Namespace: "demo", Name: "web-2"}]
	if a == nil || b == nil || a.Identity != b.Identity {
		t.Fatalf("rollouts got different identities: %+v %+v", a, b)
	}
	if _, ok := a.Labels.Get(identity.SourceK8s, "pod-template-hash"); ok {
		t.Errorf("identity labels %s keep pod-template-hash", a.Labels)
	}
}
