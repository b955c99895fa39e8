package kubeagent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/k8s/source"
)

// egressFix is the egress the article's policies leave out: default-deny
// also denies the clients' egress (see the README's walkthrough).
const egressFix = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: egress-fix
  namespace: demo
spec:
  endpointSelector:
    matchLabels:
      app: frontend
  egress:
  - toEndpoints:
    - matchLabels:
        app: backend
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: backend-egress-fix
  namespace: demo
spec:
  endpointSelector:
    matchLabels:
      app: backend
  egress:
  - toEndpoints:
    - matchLabels:
        app: database
    toPorts:
    - ports:
      - port: "5432"
        protocol: TCP
`

func containerPorts(p *corev1.Pod) []int {
	var out []int
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			out = append(out, int(cp.ContainerPort))
		}
	}
	return out
}

// runSeedApp creates the sample app's namespace and services and runs its
// Deployments' pods, spread over the nodes in turn.
func (e *env) runSeedApp() map[string]*pod {
	e.apply(seed("sample-app.yaml"))
	pods := map[string]*pod{}
	for i, p := range workloadPods(e.t, seed("sample-app.yaml")) {
		n := e.nodes[i%len(e.nodes)]
		pods[p.Name] = n.runPod(p, containerPorts(p)...)
	}
	return pods
}

// waitPolicies waits until the node's agent enforces want policies with
// every endpoint ready at the repository's revision.
func (n *node) waitPolicies(want int) {
	t := n.e.t
	t.Helper()
	c := agentapi.NewClient(n.paths.Socket)
	eventually(t, time.Minute, fmt.Sprintf("%s enforcing %d policies", n.name, want), func() error {
		st, err := c.Status(context.Background())
		if err != nil {
			return err
		}
		if st.Policies != want || !st.Ready {
			return fmt.Errorf("policies %d, ready %v, endpoints %d/%d, errors %v", st.Policies, st.Ready, st.PodsReady, st.Endpoints, st.Errors)
		}
		return nil
	})
}

func (e *env) applyText(name, text string) {
	f := filepath.Join(e.t.TempDir(), name)
	must(e.t, os.WriteFile(f, []byte(text), 0o644))
	e.apply(f)
}

// TestSeedWalkthrough is the README's walkthrough on a Kubernetes node: the
// seed's YAML applied to the API server, pods wired by bulwark-cni, real
// TCP connections.
func TestSeedWalkthrough(t *testing.T) {
	e := newEnv(t)
	n := e.addNode()
	n.start()
	pods := e.runSeedApp()
	fe, be, db := pods["frontend-0"], pods["backend-0"], pods["database-0"]
	n.waitPolicies(0)
	expect(t, fe, be, 8080, true)
	expect(t, be, db, 5432, true)
	expect(t, fe, db, 5432, true)

	e.apply(seed("default-deny.yaml"))
	n.waitPolicies(1)
	expect(t, fe, be, 8080, false)
	expect(t, be, db, 5432, false)

	e.apply(seed("frontend-to-backend.yaml"))
	e.apply(seed("backend-to-database.yaml"))
	e.apply(seed("allow-dns.yaml"))
	n.waitPolicies(4)
	// As the README says: frontend's egress stays denied.
	expect(t, fe, be, 8080, false)
	expect(t, be, db, 5432, false)

	e.applyText("egress-fix.yaml", egressFix)
	n.waitPolicies(6)
	expect(t, fe, be, 8080, true)
	expect(t, pods["frontend-1"], pods["backend-1"], 8080, true)
	expect(t, be, db, 5432, true)
	expect(t, fe, db, 5432, false) // database admits backend only
	expect(t, db, be, 8080, false) // backend admits frontend only

	// The clusterwide policies.
	e.apply(seed("clusterwide-policy.yaml"))
	n.waitPolicies(8)
	expect(t, fe, be, 8080, true)
	expect(t, fe, db, 5432, false)
	// A policy the engine refuses (fromNodes is a Cilium feature
	// Bulwark does not implement): the agent reports why, and the version
	// enforced before stays enforced: nothing weakens.
	cnps := e.dyn.Resource(source.CNPResource).Namespace("demo")
	u, err := cnps.Get(context.Background(), "egress-fix", metav1.GetOptions{})
	must(t, err)
	spec := u.Object["spec"].(map[string]any)
	spec["ingress"] = []any{map[string]any{"fromNodes": []any{map[string]any{"matchLabels": map[string]any{"env": "prod"}}}}}
	_, err = cnps.Update(context.Background(), u, metav1.UpdateOptions{})
	must(t, err)
	c := agentapi.NewClient(n.paths.Socket)
	eventually(t, time.Minute, "refused policy reported", func() error {
		st, err := c.Status(context.Background())
		if err != nil {
			return err
		}
		for _, msg := range st.Errors {
			if strings.Contains(msg, "CiliumNetworkPolicy demo/egress-fix") && strings.Contains(msg, "fromNodes") {
				return nil
			}
		}
		return fmt.Errorf("errors %v", st.Errors)
	})
	expect(t, fe, be, 8080, true)
	expect(t, fe, db, 5432, false)
}
