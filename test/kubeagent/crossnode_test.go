package kubeagent

import "testing"

// TestCrossNode: two nodes (two network namespaces on one segment, native
// routes between their pod CIDRs), the sample app spread over both, and
// policy enforced across nodes by identity (CiliumIdentity numbering makes
// both agents give the same labels the same number).
func TestCrossNode(t *testing.T) {
	e := newEnv(t)
	n0, n1 := e.addNode(), e.addNode()
	n0.start()
	n1.start()
	// frontend-0, backend-0, database-0 on node 0; frontend-1, backend-1
	// on node 1.
	pods := e.runSeedApp()
	fe0, fe1, be0, be1, db0 := pods["frontend-0"], pods["frontend-1"], pods["backend-0"], pods["backend-1"], pods["database-0"]
	n0.waitPolicies(0)
	n1.waitPolicies(0)
	expect(t, fe0, be1, 8080, true)
	expect(t, fe1, db0, 5432, true)

	e.apply(seed("default-deny.yaml"))
	e.apply(seed("frontend-to-backend.yaml"))
	e.apply(seed("backend-to-database.yaml"))
	e.applyText("egress-fix.yaml", egressFix)
	n0.waitPolicies(5)
	n1.waitPolicies(5)
	expect(t, fe0, be1, 8080, true)  // node 0 -> node 1
	expect(t, fe1, be0, 8080, true)  // node 1 -> node 0
	expect(t, be1, db0, 5432, true)  // node 1 -> node 0
	expect(t, fe1, db0, 5432, false) // database admits backend only
	expect(t, db0, be1, 8080, false) // backend admits frontend only
	expect(t, fe0, be0, 8080, true)  // and on one node
}
