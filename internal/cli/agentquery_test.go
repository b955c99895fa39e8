package cli

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/offline/check"
)

// fixedAgent answers the agent API with fixed content, so the commands'
// rendering can be checked without a sandbox (test/e2e runs them against a
// real agent).
type fixedAgent struct{}

func (fixedAgent) Status(context.Context) (agentapi.Status, error) {
	return agentapi.Status{Instance: "t", PID: 42, DatapathMode: "tcx", Revision: 7, Ready: true, Pods: 2, PodsReady: 2,
		Services: 1, Policies: 3, Endpoints: 2, Identities: 4, HubbleSock: "/run/h.sock", Socket: "/run/a.sock", StateDir: "/var/lib/x",
		Namespaces: []string{"default", "demo", "kube-system"}}, nil
}
func (fixedAgent) Apply(context.Context, agentapi.ApplyRequest) (agentapi.ApplyResponse, error) {
	return agentapi.ApplyResponse{}, errors.New("read-only")
}
func (fixedAgent) Delete(context.Context, agentapi.ApplyRequest) (agentapi.ApplyResponse, error) {
	return agentapi.ApplyResponse{}, errors.New("read-only")
}
func (fixedAgent) Pods(context.Context) ([]agentapi.Pod, error) {
	return []agentapi.Pod{
		{Namespace: "demo", Name: "web", Ready: true, Status: "Running", IP: "10.0.0.2", Node: "n1"},
		{Namespace: "other", Name: "db", Status: "Pending", Node: "n1"},
	}, nil
}
func (fixedAgent) Services(context.Context) ([]agentapi.Service, error) {
	return []agentapi.Service{{Namespace: "demo", Name: "web", Type: "ClusterIP", ClusterIP: "10.96.0.10",
		Ports: []agentapi.ServicePort{{Port: 80, Protocol: "TCP"}, {Port: 53, Protocol: "UDP"}}, Selector: map[string]string{"app": "web"}}}, nil
}
func (fixedAgent) Policies(context.Context) ([]agentapi.Policy, error) {
	return []agentapi.Policy{
		{Kind: "NetworkPolicy", Namespace: "demo", Name: "deny", Endpoints: 1},
		{Kind: "CiliumClusterwideNetworkPolicy", Name: "cw", Endpoints: 2},
		{Kind: "NetworkPolicy", Namespace: "other", Name: "hidden"},
	}, nil
}
func (fixedAgent) Endpoints(context.Context) ([]agentapi.Endpoint, error) {
	return []agentapi.Endpoint{
		{ID: 9, Pod: "demo/db", Identity: 300, Labels: nil, IPv4: "10.0.0.3", IngressEnforcement: "disabled", EgressEnforcement: "disabled", Revision: 7, Status: "ready"},
		{ID: 3, Pod: "demo/web", Identity: 256, Labels: []string{"k8s:app=web", "k8s:tier=a"}, IPv4: "10.0.0.2",
			Interface: "bwk0", IngressEnforcement: "enabled", EgressEnforcement: "disabled", Revision: 7, Status: "ready"},
	}, nil
}
func (fixedAgent) Identities(context.Context) ([]agentapi.Identity, error) {
	return []agentapi.Identity{{ID: 256, Labels: []string{"k8s:app=web", "k8s:tier=a"}}, {ID: 2, Labels: []string{"reserved:world"}}}, nil
}
func (fixedAgent) BPFPolicy(_ context.Context, id uint32) ([]agentapi.EndpointPolicy, error) {
	if id != 0 && id != 3 {
		return nil, &agentapi.NotFoundError{What: "endpoint"}
	}
	return []agentapi.EndpointPolicy{{EndpointID: 3, Pod: "demo/web", Identity: 256, Revision: 7,
		IngressEnforcement: "enabled", EgressEnforcement: "disabled",
		Entries: []agentapi.PolicyEntry{{Direction: "Ingress", Peer: "300", Port: "8080/TCP", Verdict: "allow", Policies: []string{"NetworkPolicy/demo/deny"}}}}}, nil
}

// Trace runs the real engine on the seed's app and default deny, as the
// agent runs it on its live repository.
func (fixedAgent) Trace(_ context.Context, req agentapi.TraceRequest) (agentapi.TraceResponse, error) {
	st, err := check.Load(seedFile("sample-app.yaml"), seedFile("default-deny.yaml"))
	if err != nil {
		return agentapi.TraceResponse{}, err
	}
	var b strings.Builder
	if err := st.Trace(&b, check.TraceQuery{Src: req.Src, Dst: req.Dst, Port: req.Port, Protocol: req.Protocol,
		SrcIdentity: identity.NumericIdentity(req.SrcIdentity), DstIdentity: identity.NumericIdentity(req.DstIdentity)}); err != nil {
		return agentapi.TraceResponse{}, &agentapi.UserError{Err: err}
	}
	return agentapi.TraceResponse{Text: b.String()}, nil
}
func (fixedAgent) Shutdown(context.Context, agentapi.ShutdownRequest) error {
	return errors.New("read-only")
}

// runAgentCmd runs the CLI against an API server on a fresh socket.
func runAgentCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	runDir := t.TempDir()
	srv, err := agentapi.Listen(agentapi.SocketPath(runDir, "t"), fixedAgent{})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Close(ctx)
	})
	var out bytes.Buffer
	root := NewRootCmd()
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append(args, "--instance", "t", "--run-dir", runDir, "--state-root", t.TempDir()))
	err = root.Execute()
	return out.String(), err
}

func TestAgentQueryCommandsRender(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"endpoint", "list"}, "" +
			"ENDPOINT   POLICY (ingress)   POLICY (egress)   IDENTITY   LABELS (source:key[=value])   IPv4       REVISION   STATUS\n" +
			"3          enabled            disabled          256        k8s:app=web                   10.0.0.2   7          ready\n" +
			"                                                           k8s:tier=a                                          \n" +
			"9          disabled           disabled          300                                      10.0.0.3   7          ready\n"},
		{[]string{"endpoint", "get", "demo/web"}, "" +
			"ID:                    3\n" +
			"Pod:                   demo/web\n" +
			"Identity:              256\n" +
			"Labels:                k8s:app=web, k8s:tier=a\n" +
			"IPv4:                  10.0.0.2\n" +
			"Interface:             bwk0\n" +
			"Ingress enforcement:   enabled\n" +
			"Egress enforcement:    disabled\n" +
			"Policy revision:       7\n" +
			"Status:                ready\n"},
		{[]string{"identity", "list"}, "" +
			"ID    LABELS\n" +
			"2     reserved:world\n" +
			"256   k8s:app=web\n" +
			"      k8s:tier=a\n"},
		{[]string{"get", "policies", "-n", "demo"}, "" +
			"NAME   KIND                             NAMESPACE   ENDPOINTS\n" +
			"cw     CiliumClusterwideNetworkPolicy   <cluster>   2\n" +
			"deny   NetworkPolicy                    demo        1\n"},
		{[]string{"get", "services"}, "No resources found.\n"}, // none in "default"
		{[]string{"get", "services", "-A", "-o", "wide"}, "" +
			"NAMESPACE   NAME   TYPE        CLUSTER-IP   PORT(S)         SELECTOR   BACKENDS\n" +
			"demo        web    ClusterIP   10.96.0.10   80/TCP,53/UDP   app=web    <none>\n"},
		{[]string{"get", "pods", "-A", "-o", "wide"}, "" +
			"NAMESPACE   NAME   READY   STATUS    AGE         IP         NODE   ENDPOINT   IDENTITY   LABELS\n" +
			"demo        web    1/1     Running   <unknown>   10.0.0.2   n1     0          0          <none>\n" +
			"other       db     0/1     Pending   <unknown>   <none>     n1     0          0          <none>\n"},
		{[]string{"bpf", "policy", "get", "3"}, "" +
			"Endpoint 3 (demo/web), identity 256, revision 7, ingress enforcement enabled, egress enforcement disabled\n" +
			"POLICY   DIRECTION   IDENTITY/SELECTOR   PORT/PROTO   VERDICT   POLICIES\n" +
			"Allow    Ingress     300                 8080/TCP     ALLOW     NetworkPolicy/demo/deny\n"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			got, err := runAgentCmd(t, tc.args...)
			if err != nil {
				t.Fatalf("%v: %v\n%s", tc.args, err, got)
			}
			if got != tc.want {
				t.Errorf("%v printed\n%s\nwant\n%s", tc.args, got, tc.want)
			}
		})
	}
}

func TestAgentQueryCommandsJSONAndErrors(t *testing.T) {
	if out, err := runAgentCmd(t, "identity", "list", "-o", "json"); err != nil || !strings.HasPrefix(out, "[\n  {\n    \"id\": 2,") {
		t.Errorf("identity list -o json: %v\n%s", err, out)
	}
	if out, err := runAgentCmd(t, "get", "pods", "-A", "-o", "json"); err != nil || strings.Count(out, "\"namespace\"") != 2 {
		t.Errorf("get pods -A -o json: want both pods: %v\n%s", err, out)
	}
	if out, err := runAgentCmd(t, "get", "services", "-n", "none", "-o", "json"); err != nil || out != "[]\n" {
		t.Errorf("get services -o json: want [], got %v %q", err, out)
	}
	if out, err := runAgentCmd(t, "status", "-o", "json"); err != nil || !strings.Contains(out, `"datapathMode": "tcx"`) {
		t.Errorf("status -o json: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"endpoint", "list", "-o", "wide"}, `--output "wide": must be one of json`},
		// -o is checked before the command's own arguments.
		{[]string{"bpf", "policy", "get", "-o", "yaml"}, `--output "yaml"`},
		{[]string{"bpf", "policy", "get"}, "give either --all or one endpoint ID"},
		{[]string{"bpf", "policy", "get", "0"}, `endpoint ID "0": not a positive number`},
		{[]string{"get", "pods", "-A", "-n", "demo"}, "--namespace and --all-namespaces are exclusive"},
		{[]string{"get", "nodes"}, `unknown resource "nodes"`},
		{[]string{"endpoint", "get", "77"}, "endpoint 77 not found"},
	} {
		if _, err := runAgentCmd(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%v: error %v, want one containing %q", tc.args, err, tc.wantErr)
		}
	}
}

// policy trace without -f asks the running instance (its live pods).
func TestPolicyTraceLive(t *testing.T) {
	out, err := runAgentCmd(t, "policy", "trace", "--src-k8s-pod", "demo:frontend-0", "--dst-k8s-pod", "demo:backend-0", "--dport", "8080")
	if err != nil || !strings.Contains(out, "Final verdict: DENIED") || !strings.Contains(out, "demo/default-deny-all") {
		t.Errorf("live trace: %v\n%s", err, out)
	}
	out, err = runAgentCmd(t, "policy", "trace", "--src-k8s-pod", "demo:nobody", "--dst-k8s-pod", "demo:backend-0", "--dport", "8080")
	if err == nil || !strings.Contains(err.Error(), "nobody") {
		t.Errorf("unknown pod: %v\n%s", err, out)
	}
	// No instance running: a clear error.
	root := NewRootCmd()
	var buf strings.Builder
	root.SetOut(&buf)
	root.SetErr(&buf)
	root.SetArgs([]string{"policy", "trace", "--src-k8s-pod", "demo:a", "--dst-k8s-pod", "demo:b", "--dport", "80",
		"--instance", "t", "--run-dir", t.TempDir(), "--state-root", t.TempDir()})
	if err := root.Execute(); err == nil || !strings.Contains(err.Error(), `instance "t" is not running`) {
		t.Errorf("no instance: %v", err)
	}
}
