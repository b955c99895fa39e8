package kubeagent

import (
	"context"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/bulwark-net/bulwark/internal/agent"
	k8sidentity "github.com/bulwark-net/bulwark/internal/k8s/identity"
)

// TestClusterIdentityGC: the agents delete a CiliumIdentity once no pod of
// the cluster has used it for the grace period (Cilium's operator does
// this); identities pods use stay, also past the grace.
func TestClusterIdentityGC(t *testing.T) {
	e := newEnv(t)
	n0, n1 := e.addNode(), e.addNode()
	const grace = time.Second
	for _, n := range []*node{n0, n1} {
		n.configure = func(o *agent.KubeOptions) {
			o.IdentityGrace = 200 * time.Millisecond
			o.IdentityGCInterval = 300 * time.Millisecond
			o.IdentityGCGrace = grace
		}
		n.start()
	}
	pods := e.runSeedApp()
	n0.waitPolicies(0)
	n1.waitPolicies(0)
	db := pods["database-0"]
	dbNode := n0
	if _, ok := n1.pods[db.ns+"/"+db.name]; ok {
		dbNode = n1
	}
	// Both agents collect every 300 ms: well past the grace, the
	// identities in use are still there.
	time.Sleep(4 * grace)
	for _, app := range []string{"frontend", "backend", "database"} {
		if _, err := e.identityOf(app); err != nil {
			t.Fatalf("in use past the grace: %v", err)
		}
	}
	dbID, _ := e.identityOf("database")
	dbNode.removePod(db)
	eventually(t, time.Minute, "the database's CiliumIdentity deleted once no pod uses it", func() error {
		if id, err := e.identityOf("database"); err == nil {
			return fmt.Errorf("CiliumIdentity %s still there", id)
		}
		return nil
	})
	for _, app := range []string{"frontend", "backend"} {
		if _, err := e.identityOf(app); err != nil {
			t.Errorf("after the database's went: %v", err)
		}
	}
	t.Logf("CiliumIdentity %s (app=database) deleted", dbID)
}

// identityOf names the CiliumIdentity of the demo pods labelled app.
func (e *env) identityOf(app string) (string, error) {
	l, err := e.dyn.Resource(k8sidentity.Resource).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return "", err
	}
	for _, it := range l.Items {
		m, _, _ := unstructured.NestedStringMap(it.Object, "security-labels")
		if m["k8s:app"] == app && m["k8s:io.kubernetes.pod.namespace"] == "demo" {
			return it.GetName(), nil
		}
	}
	return "", fmt.Errorf("no CiliumIdentity for demo pods app=%s among %d", app, len(l.Items))
}
