// Package e2e runs Bulwark's privileged end-to-end scenarios: the real
// binary brings up a sandbox (network namespaces, veths, BPF programs, a
// cluster DNS) and the tests send real traffic between its pods.
//
// The tests need root; each uses its own instance name and removes
// everything with 'bulwark down' in t.Cleanup.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bulwark-net/bulwark/internal/agent"
	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/datapath"
	"github.com/bulwark-net/bulwark/internal/sandbox"
	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
	"github.com/bulwark-net/bulwark/test/sandboxtest"
)

func TestMain(m *testing.M) { sandboxtest.Main(m) }

func newSandbox(t *testing.T) *sandboxtest.Instance {
	t.Helper()
	return sandboxtest.New(t, sandboxtest.Options{Prefix: "e2e"})
}

// TestSeedScenario walks the seed article's scenario and checks what
// Kubernetes and Cilium semantics actually give, including where the
// article is wrong (after default-deny-all, ingress allows alone do not
// reopen frontend -> backend: egress is denied too).
func TestSeedScenario(t *testing.T) {
	t.Parallel()
	s := newSandbox(t)

	// Invalid input: nothing starts.
	if _, errOut, code := s.Run("up", "-f", "testdata/bad-policy.yaml"); code != 1 || !strings.Contains(errOut, "99999") {
		t.Fatalf("up with an invalid policy: exit %d, stderr %q; want exit 1 naming the bad port", code, errOut)
	}
	if pid, _ := agent.RunningPID(s.Paths()); pid != 0 {
		t.Fatalf("an agent (pid %d) runs after a rejected up", pid)
	}

	s.MustRun("up", "-f", sandboxtest.Seed(t, "sample-app.yaml"))
	st := s.Status()
	if !st.Ready || st.Pods != 6 || st.PodsReady != 6 || st.Services != 4 {
		t.Fatalf("after up: status %+v; want ready, 6/6 pods (5 demo + DNS), 4 services", st)
	}
	// Every endpoint is attached one way: TCX, or the clsact fallback.
	if st.DatapathMode != string(datapath.AttachTCX) && st.DatapathMode != string(datapath.AttachLegacyTC) {
		t.Errorf("after up: datapath mode %q; want %q or %q", st.DatapathMode, datapath.AttachTCX, datapath.AttachLegacyTC)
	}
	if _, errOut, code := s.Run("up", "-f", sandboxtest.Seed(t, "sample-app.yaml")); code != 1 || !strings.Contains(errOut, "already running") {
		t.Errorf("second up: exit %d, stderr %q; want exit 1 saying it is already running", code, errOut)
	}
	pods := s.MustRun("get", "pods", "-n", "demo")
	if n := strings.Count(pods, "Running"); n != 5 {
		t.Errorf("get pods -n demo: %d Running, want 5:\n%s", n, pods)
	}

	// No policy: everything connects, by service name.
	s.ExpectHTTP("deploy/frontend", "http://backend:8080", "pod=demo/backend-")
	s.ExpectTCP("deploy/backend", "database", "5432", true)

	// default-deny-all: ingress and egress denied for every demo pod.
	s.MustRun("apply", "-f", sandboxtest.Seed(t, "default-deny.yaml"))
	backendIP := s.Pod("deploy/backend").IPs[0].String()
	s.ExpectHTTPBlocked("deploy/frontend", "http://"+backendIP+":8080")
	s.ExpectHTTPBlocked("deploy/frontend", "http://backend:8080")
	if s.Resolves("deploy/frontend", "backend") {
		t.Errorf("DNS resolves under default-deny-all: egress to kube-dns should be denied")
	}
	// The drops are the policy's, and Hubble says so.
	if !hubbleSawDrop(t, s, "default-deny-all") {
		t.Errorf("no DROPPED flow naming default-deny-all in Hubble")
	}

	// The article's three policies: DNS works again, but frontend ->
	// backend stays blocked (frontend's egress is still default deny).
	s.MustRun("apply", "-f", sandboxtest.Seed(t, "frontend-to-backend.yaml"), "-f", sandboxtest.Seed(t, "backend-to-database.yaml"), "-f", sandboxtest.Seed(t, "allow-dns.yaml"))
	if !s.Resolves("deploy/frontend", "backend") || !s.Resolves("deploy/backend", "database") {
		t.Errorf("DNS does not resolve after allow-dns")
	}
	s.ExpectHTTPBlocked("deploy/frontend", "http://backend:8080")
	s.ExpectTCP("deploy/backend", "database", "5432", false)
	// policy trace without -f explains it from the live pods.
	fe, be := s.Pod("deploy/frontend"), s.Pod("deploy/backend")
	if out := s.MustRun("policy", "trace", "--src-k8s-pod", "demo:"+fe.Name, "--dst-k8s-pod", "demo:"+be.Name, "--dport", "8080"); !strings.Contains(out, "Final verdict: DENIED") || !strings.Contains(out, "demo/default-deny-all") {
		t.Errorf("live policy trace frontend -> backend:\n%s", out)
	}

	// Egress allowances: the intended paths open, the others stay shut.
	s.MustRun("apply", "-f", "testdata/egress-allowances.yaml")
	s.ExpectHTTP("deploy/frontend", "http://backend:8080", "pod=demo/backend-")
	s.ExpectTCP("deploy/backend", "database", "5432", true)
	s.ExpectTCP("deploy/frontend", "database", "5432", false)
	s.ExpectHTTPBlocked("deploy/backend", "http://frontend:80")
	s.ExpectTCP("deploy/database", "backend", "8080", false)

	// A new pod under default deny: enforced from its first packet, and
	// removed again by delete.
	s.MustRun("apply", "-f", "testdata/intruder-pod.yaml")
	if st := s.Status(); !st.Ready || st.PodsReady != 7 {
		t.Errorf("after adding a pod: %d/%d pods ready, ready=%v; want 7", st.PodsReady, st.Pods, st.Ready)
	}
	s.ExpectHTTPBlocked("intruder", "http://backend:8080")
	s.ExpectHTTPBlocked("deploy/frontend", "http://"+s.Pod("intruder").IPs[0].String()+":8080")
	s.MustRun("delete", "-f", "testdata/intruder-pod.yaml")
	if st := s.Status(); st.Pods != 6 {
		t.Errorf("after deleting the pod: %d pods, want 6", st.Pods)
	}

	// A bad document changes nothing, not even the valid one beside it.
	before := s.Status().Policies
	if _, errOut, code := s.Run("apply", "-f", "testdata/bad-policy.yaml"); code != 1 || !strings.Contains(errOut, "bad-policy.yaml") {
		t.Errorf("apply bad-policy.yaml: exit %d, stderr %q; want exit 1 naming the file", code, errOut)
	}
	if after := s.Status().Policies; after != before {
		t.Errorf("policies %d -> %d after a rejected apply", before, after)
	}
	s.ExpectTCP("deploy/frontend", "database", "5432", false)

	// The datapath's table for a backend endpoint names the policies.
	var bpf []agentapi.EndpointPolicy
	if err := json.Unmarshal([]byte(s.MustRun("bpf", "policy", "get", "--all", "-o", "json")), &bpf); err != nil {
		t.Fatal(err)
	}
	if !hasEntry(bpf, "demo/backend-", "Ingress", "8080/TCP", "CiliumNetworkPolicy/demo/frontend-to-backend") {
		t.Errorf("bpf policy get: no ingress 8080/TCP entry from frontend-to-backend on a backend endpoint: %+v", bpf)
	}

	// Deleting a policy blocks its traffic again, established connections
	// included (their conntrack entries revalidate against the new tables).
	open := openKeepAlive(t, s.Pod("deploy/frontend"), backendIP)
	open.get(t, "before its allow is deleted")
	s.MustRun("delete", "-f", "testdata/delete-frontend-egress.yaml")
	if err := open.try(); err == nil {
		t.Errorf("an established frontend -> backend connection still works after its allow was deleted")
	}
	open.close()
	s.ExpectHTTPBlocked("deploy/frontend", "http://backend:8080")
	s.MustRun("apply", "-f", "testdata/egress-allowances.yaml")
	s.ExpectHTTP("deploy/frontend", "http://backend:8080", "pod=demo/backend-")

	s.MustRun("delete", "-f", "testdata/delete-backend-egress.yaml")
	s.ExpectTCP("deploy/backend", "database", "5432", false)
	s.ExpectHTTP("deploy/frontend", "http://backend:8080", "pod=demo/backend-")

	// Restart: kill the agent; enforcement holds while it is down and an
	// open connection survives it and the new agent.
	conn := openKeepAlive(t, s.Pod("deploy/frontend"), backendIP)
	conn.get(t, "before the restart")
	revBefore := s.Status().Revision
	pid, _ := agent.RunningPID(s.Paths())
	if pid == 0 {
		t.Fatal("no agent pid")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if p, _ := agent.RunningPID(s.Paths()); p == 0 {
			break
		}
		if i > 100 {
			t.Fatalf("agent %d still holds its lock after SIGKILL", pid)
		}
		time.Sleep(100 * time.Millisecond)
	}
	conn.get(t, "while the agent is down")
	s.ExpectTCP("deploy/backend", "database", "5432", false)
	s.ExpectTCP("deploy/frontend", "database", "5432", false)
	s.ExpectHTTP("deploy/frontend", "http://backend:8080", "pod=demo/backend-")

	s.MustRun("up") // resumes from the state directory
	conn.get(t, "after the restart")
	st = s.Status()
	if !st.Ready || st.PodsReady != 6 {
		t.Errorf("after restart: status %+v; want ready with 6 pods", st)
	}
	if st.Revision != revBefore {
		t.Logf("policy revision %d -> %d across the restart (tables re-pushed)", revBefore, st.Revision)
	}
	s.ExpectTCP("deploy/backend", "database", "5432", false)
	s.ExpectTCP("deploy/frontend", "database", "5432", false)
	s.ExpectHTTP("deploy/frontend", "http://backend:8080", "pod=demo/backend-")
	conn.close()
}

// hubbleSawDrop reads the recent flows from the agent's Hubble socket and
// reports whether one was dropped by the named policy.
func hubbleSawDrop(t *testing.T, s *sandboxtest.Instance, policy string) bool {
	t.Helper()
	sock := s.Status().HubbleSock
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("hubble: %v", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := observerpb.NewObserverClient(conn).GetFlows(ctx, &observerpb.GetFlowsRequest{Number: 1000})
	if err != nil {
		t.Fatalf("hubble GetFlows: %v", err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return false
		}
		f := resp.GetFlow()
		if f == nil || f.GetVerdict() != flowpb.Verdict_DROPPED {
			continue
		}
		if sandboxtest.DeniedBy(f, policy) {
			return true
		}
	}
}

func hasEntry(eps []agentapi.EndpointPolicy, podPrefix, dir, port, policy string) bool {
	for _, ep := range eps {
		if !strings.HasPrefix(ep.Pod, podPrefix) {
			continue
		}
		for _, e := range ep.Entries {
			if e.Direction != dir || e.Port != port {
				continue
			}
			for _, p := range e.Policies {
				if p == policy {
					return true
				}
			}
		}
	}
	return false
}

// keepAlive is one HTTP/1.1 connection from a pod's namespace, reused for
// every request.
type keepAlive struct {
	c  net.Conn
	rd *bufio.Reader
}

func openKeepAlive(t *testing.T, from sandbox.PodInfo, ip string) *keepAlive {
	t.Helper()
	var c net.Conn
	err := netns.Do(from.NetnsPath, func() error {
		var err error
		c, err = net.DialTimeout("tcp", net.JoinHostPort(ip, "8080"), 2*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("connect from %s to %s:8080: %v", from.Key(), ip, err)
	}
	return &keepAlive{c: c, rd: bufio.NewReader(c)}
}

func (k *keepAlive) get(t *testing.T, when string) {
	t.Helper()
	if err := k.try(); err != nil {
		t.Errorf("open connection %s: %v", when, err)
	}
}

// try sends one request on the connection and reads the answer.
func (k *keepAlive) try() error {
	k.c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(k.c, "GET /keepalive HTTP/1.1\r\nHost: backend\r\n\r\n"); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	resp, err := http.ReadResponse(k.rd, nil)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

func (k *keepAlive) close() { k.c.Close() }

// TestDownIdempotent: down on an instance that never ran, twice, succeeds
// and leaves nothing.
func TestDownIdempotent(t *testing.T) {
	t.Parallel()
	s := newSandbox(t)
	for i := 0; i < 2; i++ {
		if out, errOut, code := s.Run("down"); code != 0 {
			t.Fatalf("down #%d: exit %d: %s %s", i+1, code, out, errOut)
		}
	}
	if out, _, code := s.Run("status"); code != 1 || !strings.Contains(out, "not running") {
		t.Errorf("status of a removed instance: exit %d, %q", code, out)
	}
}

// TestTwoInstances: two sandboxes run side by side with disjoint ranges;
// each works, and neither reaches the other's pods.
func TestTwoInstances(t *testing.T) {
	t.Parallel()
	a, b := newSandbox(t), newSandbox(t)
	a.MustRun("up", "-f", sandboxtest.Seed(t, "sample-app.yaml"))
	b.MustRun("up", "-f", sandboxtest.Seed(t, "sample-app.yaml"))
	sa, sb := a.Status(), b.Status()
	if !sa.Ready || !sb.Ready {
		t.Fatalf("not ready: %+v / %+v", sa, sb)
	}
	a.ExpectHTTP("deploy/frontend", "http://backend:8080", "pod=demo/backend-")
	b.ExpectHTTP("deploy/frontend", "http://backend:8080", "pod=demo/backend-")
	aIP := a.Pod("deploy/backend").IPs[0]
	bIP := b.Pod("deploy/backend").IPs[0]
	if aIP == bIP {
		t.Fatalf("both instances gave a backend %v", aIP)
	}
	b.ExpectHTTPBlocked("deploy/frontend", "http://"+aIP.String()+":8080")
	a.ExpectHTTPBlocked("deploy/frontend", "http://"+bIP.String()+":8080")
}
