package e2e

import (
	"bufio"
	"context"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bulwark-net/bulwark/test/sandboxtest"
)

// auditFlowsNaming returns the AUDIT flows of 'observe --verdict AUDIT'
// (JSON) that name policy as the one that would have denied them.
func auditFlowsNaming(t *testing.T, s *sandboxtest.Instance, policy string) int {
	t.Helper()
	out := s.MustRun("observe", "--verdict", "AUDIT", "--last", "1000", "-o", "json")
	n := 0
	for _, line := range strings.Split(out, "\n") {
		line = strings.ReplaceAll(line, " ", "") // protojson varies its spacing
		if line == "" {
			continue
		}
		if !strings.Contains(line, `"verdict":"AUDIT"`) {
			t.Fatalf("observe --verdict AUDIT printed a flow of another verdict: %s", line)
		}
		if strings.Contains(line, `"name":"`+policy+`","namespace":"demo"`) {
			n++
		}
	}
	return n
}

// TestAuditMode: the seed's default-deny-all applied with 'apply --audit'
// (policy.bulwark.io/audit: "true") passes the traffic it would drop, and
// Hubble shows AUDIT flows naming it; policy trace says the same. Applied
// again without the annotation, the same traffic drops. An enforcing
// policy next to an audit one keeps enforcing.
func TestAuditMode(t *testing.T) {
	t.Parallel()
	s := sandboxtest.New(t, sandboxtest.Options{Prefix: "e2e-audit"})
	s.MustRun("up", "-f", sandboxtest.Seed(t, "sample-app.yaml"))
	backendIP := s.Pod("deploy/backend").IPs[0].String()
	if n := auditFlowsNaming(t, s, "default-deny-all"); n != 0 {
		t.Fatalf("%d AUDIT flows before any audit policy", n)
	}

	// Audit mode: default deny in both directions becomes audit.
	out := s.MustRun("apply", "--audit", "-f", sandboxtest.Seed(t, "default-deny.yaml"))
	if !strings.Contains(out, "default-deny-all") {
		t.Fatalf("apply --audit output: %s", out)
	}
	s.ExpectHTTP("deploy/frontend", "http://"+backendIP+":8080", "pod=demo/backend-")
	s.ExpectHTTP("deploy/frontend", "http://backend:8080", "pod=demo/backend-") // DNS passes too
	if !sandboxtest.Eventually(sandboxtest.FlowDelay, func() bool { return auditFlowsNaming(t, s, "default-deny-all") > 0 }) {
		t.Errorf("no AUDIT flow naming demo/default-deny-all after traffic under the audit-mode policy")
	}
	// Trace events, aggregated per connection and direction: at both pods'
	// hooks, for TCP and for the DNS lookups (UDP), replies marked.
	wants := []string{`"traceObservationPoint":"TO_ENDPOINT"`, `"traceObservationPoint":"FROM_ENDPOINT"`, `"isReply":true`, `"UDP":{`}
	var traces string
	sandboxtest.Eventually(sandboxtest.FlowDelay, func() bool {
		traces = strings.ReplaceAll(s.MustRun("observe", "--type", "trace", "--last", "1000", "-o", "json"), " ", "")
		for _, want := range wants {
			if !strings.Contains(traces, want) {
				return false
			}
		}
		return true
	})
	for _, want := range wants {
		if !strings.Contains(traces, want) {
			t.Errorf("observe --type trace: no flow with %s:\n%.2000s\nagent log:\n%s", want, traces, s.AgentLog())
		}
	}
	fe, be := s.Pod("deploy/frontend"), s.Pod("deploy/backend")
	trace := s.MustRun("policy", "trace", "--src-k8s-pod", "demo:"+fe.Name, "--dst-k8s-pod", "demo:"+be.Name, "--dport", "8080")
	if !strings.Contains(trace, "Final verdict: ALLOWED") || !strings.Contains(trace, "AUDIT: would be denied by demo/default-deny-all") {
		t.Errorf("policy trace under the audit-mode policy:\n%s", trace)
	}

	// An enforcing policy beside it keeps enforcing: backend's ingress is
	// default deny again (it allows only frontend), so database -> backend
	// drops while frontend -> backend passes, still flagged by the audit
	// policy on frontend's egress.
	s.MustRun("apply", "-f", sandboxtest.Seed(t, "frontend-to-backend.yaml"))
	s.ExpectHTTP("deploy/frontend", "http://"+backendIP+":8080", "pod=demo/backend-")
	s.ExpectTCP("deploy/database", backendIP, "8080", false)
	s.MustRun("delete", "-f", sandboxtest.Seed(t, "frontend-to-backend.yaml"))

	// The annotation removed: the same policy enforces.
	s.MustRun("apply", "-f", sandboxtest.Seed(t, "default-deny.yaml"))
	s.ExpectHTTPBlocked("deploy/frontend", "http://"+backendIP+":8080")
	if !hubbleSawDrop(t, s, "default-deny-all") {
		t.Errorf("no DROPPED flow naming default-deny-all once the audit annotation is gone")
	}
	// apply --audit again: the open connection's verdict is revalidated
	// and new ones pass again.
	s.MustRun("apply", "--audit", "-f", sandboxtest.Seed(t, "default-deny.yaml"))
	s.ExpectHTTP("deploy/frontend", "http://"+backendIP+":8080", "pod=demo/backend-")
}

// TestAuditModeOnL7RedirectedPort: an audit-mode deny of a port that
// another policy's L7 rules send to the proxy passes the connection to the
// proxy, which keeps enforcing the L7 rules (allowed requests 200, others
// 403), and the connection's flow is AUDIT naming the audit policy; policy
// trace says both. L7 rules in an audit-mode policy are refused.
// Enforcing, the same deny drops the connection.
func TestAuditModeOnL7RedirectedPort(t *testing.T) {
	t.Parallel()
	s := sandboxtest.New(t, sandboxtest.Options{Prefix: "e2e-auditl7"})
	// Through the node's stack: the pods' egress traces are to-stack.
	s.MustRun("up", "--local-delivery=false", "-f", sandboxtest.Seed(t, "sample-app.yaml"))
	s.MustRun("apply", "-f", sandboxtest.Seed(t, "l7-http-policy.yaml"))
	const fe, base, audit = "deploy/frontend", "http://backend:8080", "audit-deny-frontend-to-backend"
	s.MustRun("apply", "--audit", "-f", "testdata/audit-deny-frontend-to-backend.yaml")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	mon := exec.CommandContext(ctx, sandboxtest.Binary(), s.Args("monitor", "--type", "trace")...)
	monOut, err := mon.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := mon.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = mon.Wait() }()
	time.Sleep(time.Second) // the monitor's subscription
	if got := curlCodes(s, fe, nil, base+"/health", base+"/admin/secret"); got != "200:1 403:0" {
		t.Errorf("under the audit-mode deny: %q, want 200:1 403:0 (the proxy still judges each request)", got)
	}
	// monitor --type trace shows the packets' way: to the stack from the
	// client (and the DNS server's replies), to the proxy, to the pods.
	wantLines := map[string]bool{"-> stack": false, "-> proxy": false, "-> endpoint": false, "state reply": false}
	lines := bufio.NewScanner(monOut)
	go func() { time.Sleep(10 * time.Second); cancel() }()
	for lines.Scan() {
		for w := range wantLines {
			if strings.Contains(lines.Text(), w) {
				wantLines[w] = true
			}
		}
		if !slices.Contains(slices.Collect(maps.Values(wantLines)), false) {
			break
		}
	}
	for w, seen := range wantLines {
		if !seen {
			t.Errorf("monitor --type trace printed no line with %q", w)
		}
	}
	stack := strings.ReplaceAll(s.MustRun("observe", "--type", "trace:to-stack", "--last", "1000", "-o", "json"), " ", "")
	if !strings.Contains(stack, `"traceObservationPoint":"TO_STACK"`) || strings.Contains(stack, `"traceObservationPoint":"TO_ENDPOINT"`) {
		t.Errorf("observe --type trace:to-stack:\n%.2000s", stack)
	}
	if n := auditFlowsNaming(t, s, audit); n == 0 {
		t.Errorf("no AUDIT flow naming demo/%s for connections to the L7-redirected port", audit)
	}
	fePod, be := s.Pod(fe), s.Pod("deploy/backend")
	trace := s.MustRun("policy", "trace", "--src-k8s-pod", "demo:"+fePod.Name, "--dst-k8s-pod", "demo:"+be.Name, "--dport", "8080")
	if !strings.Contains(trace, "each request judged by the L7 rules") || !strings.Contains(trace, "AUDIT: would be denied by demo/"+audit) {
		t.Errorf("policy trace under the audit-mode deny of the redirected port:\n%s", trace)
	}

	// L7 rules in an audit-mode policy are refused: the proxy has no audit
	// mode, it would enforce them.
	if out, errOut, code := s.Run("apply", "--audit", "-f", sandboxtest.Seed(t, "l7-http-policy.yaml")); code == 0 ||
		!strings.Contains(out+errOut, "audit-mode") || !strings.Contains(out+errOut, "l7-http-policy") {
		t.Errorf("apply --audit of a policy with L7 rules: exit %d, %s%s; want a refusal naming the policy", code, out, errOut)
	}

	// Enforcing: the deny wins over the redirect.
	s.MustRun("apply", "-f", "testdata/audit-deny-frontend-to-backend.yaml")
	if got := curlCodes(s, fe, nil, base+"/health"); got != "000:0" {
		t.Errorf("under the enforcing deny: %q, want the connection dropped (000:0)", got)
	}
}
