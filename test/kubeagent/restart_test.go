package kubeagent

import "testing"

// TestAgentRestart: the agent stops and starts again; an established
// allowed connection carries data throughout (the pinned datapath enforces
// without the agent) and new denied connections stay denied.
func TestAgentRestart(t *testing.T) {
	e := newEnv(t)
	n := e.addNode()
	n.start()
	pods := e.runSeedApp()
	fe, be, db := pods["frontend-0"], pods["backend-0"], pods["database-0"]
	e.apply(seed("default-deny.yaml"))
	e.apply(seed("frontend-to-backend.yaml"))
	e.applyText("egress-fix.yaml", egressFix)
	n.waitPolicies(4)
	expect(t, fe, be, 8080, true)
	expect(t, fe, db, 5432, false)

	c, err := dial(fe, be.ip, 8080)
	must(t, err)
	defer c.c.Close()
	must(t, c.echo("before"))

	n.stop()
	if err := c.echo("agent down"); err != nil {
		t.Fatalf("established connection while the agent is down: %v", err)
	}
	if err := reach(fe, db, 5432); err == nil {
		t.Fatal("frontend -> database connected while the agent is down")
	}
	if err := reach(fe, be, 8080); err != nil {
		t.Fatalf("frontend -> backend while the agent is down: %v", err)
	}

	n.start()
	n.waitPolicies(4)
	if err := c.echo("after restart"); err != nil {
		t.Fatalf("established connection after the restart: %v", err)
	}
	if err := reach(fe, db, 5432); err == nil {
		t.Fatal("frontend -> database connected after the restart")
	}
	if err := reach(fe, be, 8080); err != nil {
		t.Fatalf("frontend -> backend after the restart: %v", err)
	}
	// The restarted agent still follows the API server.
	e.apply(seed("backend-to-database.yaml"))
	n.waitPolicies(5)
	expect(t, be, db, 5432, true)
	expect(t, fe, db, 5432, false)
}
