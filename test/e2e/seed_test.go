// Package e2e runs Bulwark's privileged end-to-end scenarios: the real
// binary brings up a sandbox (network namespaces, veths, BPF programs, a
// cluster DNS) and the tests send real traffic between its pods.
//
// The tests need root; each uses its own instance name and removes
// everything with 'bulwark down' in t.Cleanup.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
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
	"github.com/bulwark-net/bulwark/internal/sandbox"
	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
)

// bulwarkBin is the binary under test, built once by TestMain.
var bulwarkBin string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		os.Exit(m.Run()) // every test skips
	}
	dir, err := os.MkdirTemp("", "bulwark-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bulwarkBin = filepath.Join(dir, "bulwark")
	build := exec.Command("go", "build", "-o", bulwarkBin, "./cmd/bulwark")
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build bulwark: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// sandboxUnderTest is one instance driven through the CLI.
type sandboxUnderTest struct {
	t         *testing.T
	instance  string
	stateRoot string
}

func newSandbox(t *testing.T) *sandboxUnderTest {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veths and BPF programs")
	}
	b := make([]byte, 3)
	rand.Read(b)
	s := &sandboxUnderTest{t: t, instance: "e2e-" + hex.EncodeToString(b), stateRoot: t.TempDir()}
	t.Cleanup(func() {
		out, _, code := s.run("down")
		if code != 0 {
			t.Errorf("bulwark down: exit %d: %s", code, out)
		}
		ents, _ := os.ReadDir(netns.Dir)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "bwk-"+s.instance+"-") {
				t.Errorf("netns %s left after down", e.Name())
			}
		}
		if _, err := os.Stat(filepath.Join(agent.DefaultPinRoot, s.instance)); err == nil {
			t.Errorf("bpffs pins of %s left after down", s.instance)
		}
	})
	return s
}

func (s *sandboxUnderTest) paths() agent.Paths {
	return agent.NewPaths(agent.PathsOptions{Instance: s.instance, StateRoot: s.stateRoot})
}

// run runs the CLI with the instance flags; it returns stdout, stderr and
// the exit status.
func (s *sandboxUnderTest) run(args ...string) (string, string, int) {
	s.t.Helper()
	args = append(args, "--instance", s.instance, "--state-root", s.stateRoot)
	if args[0] == "up" {
		args = append(args, "--hubble-listen", "127.0.0.1:0", "--metrics-listen", "", "--wait", "2m")
	}
	cmd := exec.Command(bulwarkBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		s.t.Fatalf("run bulwark %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

func (s *sandboxUnderTest) mustRun(args ...string) string {
	s.t.Helper()
	out, errOut, code := s.run(args...)
	if code != 0 {
		s.t.Fatalf("bulwark %s: exit %d\nstdout: %s\nstderr: %s\nagent log:\n%s", strings.Join(args, " "), code, out, errOut, s.agentLog())
	}
	return out
}

func (s *sandboxUnderTest) agentLog() string {
	b, _ := os.ReadFile(s.paths().LogFile)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func (s *sandboxUnderTest) client() *agentapi.Client { return agentapi.NewClient(s.paths().Socket) }

// exec runs a command in a demo pod (what 'bulwark exec' runs) and returns
// its output and exit status.
func (s *sandboxUnderTest) exec(target string, command ...string) (string, int) {
	s.t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code, err := sandbox.Exec(ctx, sandbox.ExecOptions{
		Instance: s.instance, Namespace: "demo", Target: target, Command: command,
		Stdin: strings.NewReader(""), Stdout: &out, Stderr: &out,
	})
	if err != nil {
		s.t.Fatalf("exec %s %v: %v", target, command, err)
	}
	return out.String(), code
}

// http fetches url from a pod: one try, two seconds.
func (s *sandboxUnderTest) http(from, url string) (string, bool) {
	out, code := s.exec(from, "wget", "--timeout=2", "--tries=1", "-q", "-O-", url)
	return out, code == 0
}

// tcp opens (and closes) a TCP connection from a pod.
func (s *sandboxUnderTest) tcp(from, host, port string) bool {
	_, code := s.exec(from, "nc", "-w", "2", "-z", host, port)
	return code == 0
}

func (s *sandboxUnderTest) resolves(from, name string) bool {
	_, code := s.exec(from, "getent", "hosts", name)
	return code == 0
}

func (s *sandboxUnderTest) expectHTTP(from, url, wantInBody string) {
	s.t.Helper()
	body, ok := s.http(from, url)
	if !ok || !strings.Contains(body, wantInBody) {
		s.t.Errorf("%s -> %s: want an answer containing %q, got ok=%v %q", from, url, wantInBody, ok, body)
	}
}

func (s *sandboxUnderTest) expectHTTPBlocked(from, url string) {
	s.t.Helper()
	if body, ok := s.http(from, url); ok {
		s.t.Errorf("%s -> %s: want blocked, got an answer %q", from, url, body)
	}
}

func (s *sandboxUnderTest) expectTCP(from, host, port string, open bool) {
	s.t.Helper()
	if got := s.tcp(from, host, port); got != open {
		s.t.Errorf("%s -> %s:%s: connected=%v, want %v", from, host, port, got, open)
	}
}

func (s *sandboxUnderTest) status() agentapi.Status {
	s.t.Helper()
	st, err := s.client().Status(context.Background())
	if err != nil {
		s.t.Fatalf("status: %v", err)
	}
	return st
}

func (s *sandboxUnderTest) pod(target string) sandbox.PodInfo {
	s.t.Helper()
	st, err := sandbox.ReadState("", s.instance)
	if err != nil {
		s.t.Fatal(err)
	}
	p, err := st.FindPod("demo", target)
	if err != nil {
		s.t.Fatal(err)
	}
	return p
}

func seed(name string) string { return filepath.Join("..", "..", "testdata", "seed", name) }

// TestSeedScenario walks the seed article's scenario and checks what
// Kubernetes and Cilium semantics actually give, including where the
// article is wrong (after default-deny-all, ingress allows alone do not
// reopen frontend -> backend: egress is denied too).
func TestSeedScenario(t *testing.T) {
	t.Parallel()
	s := newSandbox(t)

	// Invalid input: nothing starts.
	if _, errOut, code := s.run("up", "-f", "testdata/bad-policy.yaml"); code != 1 || !strings.Contains(errOut, "99999") {
		t.Fatalf("up with an invalid policy: exit %d, stderr %q; want exit 1 naming the bad port", code, errOut)
	}
	if pid, _ := agent.RunningPID(s.paths()); pid != 0 {
		t.Fatalf("an agent (pid %d) runs after a rejected up", pid)
	}

	s.mustRun("up", "-f", seed("sample-app.yaml"))
	st := s.status()
	if !st.Ready || st.Pods != 6 || st.PodsReady != 6 || st.Services != 4 {
		t.Fatalf("after up: status %+v; want ready, 6/6 pods (5 demo + DNS), 4 services", st)
	}
	if _, errOut, code := s.run("up", "-f", seed("sample-app.yaml")); code != 1 || !strings.Contains(errOut, "already running") {
		t.Errorf("second up: exit %d, stderr %q; want exit 1 saying it is already running", code, errOut)
	}
	pods := s.mustRun("get", "pods", "-n", "demo")
	if n := strings.Count(pods, "Running"); n != 5 {
		t.Errorf("get pods -n demo: %d Running, want 5:\n%s", n, pods)
	}

	// No policy: everything connects, by service name.
	s.expectHTTP("deploy/frontend", "http://backend:8080", "pod=demo/backend-")
	s.expectTCP("deploy/backend", "database", "5432", true)

	// default-deny-all: ingress and egress denied for every demo pod.
	s.mustRun("apply", "-f", seed("default-deny.yaml"))
	backendIP := s.pod("deploy/backend").IPs[0].String()
	s.expectHTTPBlocked("deploy/frontend", "http://"+backendIP+":8080")
	s.expectHTTPBlocked("deploy/frontend", "http://backend:8080")
	if s.resolves("deploy/frontend", "backend") {
		t.Errorf("DNS resolves under default-deny-all: egress to kube-dns should be denied")
	}
	// The drops are the policy's, and Hubble says so.
	if !s.hubbleSawDrop("default-deny-all") {
		t.Errorf("no DROPPED flow naming default-deny-all in Hubble")
	}

	// The article's three policies: DNS works again, but frontend ->
	// backend stays blocked (frontend's egress is still default deny).
	s.mustRun("apply", "-f", seed("frontend-to-backend.yaml"), "-f", seed("backend-to-database.yaml"), "-f", seed("allow-dns.yaml"))
	if !s.resolves("deploy/frontend", "backend") || !s.resolves("deploy/backend", "database") {
		t.Errorf("DNS does not resolve after allow-dns")
	}
	s.expectHTTPBlocked("deploy/frontend", "http://backend:8080")
	s.expectTCP("deploy/backend", "database", "5432", false)

	// Egress allowances: the intended paths open, the others stay shut.
	s.mustRun("apply", "-f", "testdata/egress-allowances.yaml")
	s.expectHTTP("deploy/frontend", "http://backend:8080", "pod=demo/backend-")
	s.expectTCP("deploy/backend", "database", "5432", true)
	s.expectTCP("deploy/frontend", "database", "5432", false)
	s.expectHTTPBlocked("deploy/backend", "http://frontend:80")
	s.expectTCP("deploy/database", "backend", "8080", false)

	// A new pod under default deny: enforced from its first packet, and
	// removed again by delete.
	s.mustRun("apply", "-f", "testdata/intruder-pod.yaml")
	if st := s.status(); !st.Ready || st.PodsReady != 7 {
		t.Errorf("after adding a pod: %d/%d pods ready, ready=%v; want 7", st.PodsReady, st.Pods, st.Ready)
	}
	s.expectHTTPBlocked("intruder", "http://backend:8080")
	s.expectHTTPBlocked("deploy/frontend", "http://"+s.pod("intruder").IPs[0].String()+":8080")
	s.mustRun("delete", "-f", "testdata/intruder-pod.yaml")
	if st := s.status(); st.Pods != 6 {
		t.Errorf("after deleting the pod: %d pods, want 6", st.Pods)
	}

	// A bad document changes nothing, not even the valid one beside it.
	before := s.status().Policies
	if _, errOut, code := s.run("apply", "-f", "testdata/bad-policy.yaml"); code != 1 || !strings.Contains(errOut, "bad-policy.yaml") {
		t.Errorf("apply bad-policy.yaml: exit %d, stderr %q; want exit 1 naming the file", code, errOut)
	}
	if after := s.status().Policies; after != before {
		t.Errorf("policies %d -> %d after a rejected apply", before, after)
	}
	s.expectTCP("deploy/frontend", "database", "5432", false)

	// The datapath's table for a backend endpoint names the policies.
	var bpf []agentapi.EndpointPolicy
	if err := json.Unmarshal([]byte(s.mustRun("bpf", "policy", "get", "--all", "-o", "json")), &bpf); err != nil {
		t.Fatal(err)
	}
	if !hasEntry(bpf, "demo/backend-", "Ingress", "8080/TCP", "CiliumNetworkPolicy/demo/frontend-to-backend") {
		t.Errorf("bpf policy get: no ingress 8080/TCP entry from frontend-to-backend on a backend endpoint: %+v", bpf)
	}

	// Deleting a policy blocks its traffic again, established connections
	// included (their conntrack entries revalidate against the new tables).
	open := openKeepAlive(t, s.pod("deploy/frontend"), backendIP)
	open.get(t, "before its allow is deleted")
	s.mustRun("delete", "-f", "testdata/delete-frontend-egress.yaml")
	if err := open.try(); err == nil {
		t.Errorf("an established frontend -> backend connection still works after its allow was deleted")
	}
	open.close()
	s.expectHTTPBlocked("deploy/frontend", "http://backend:8080")
	s.mustRun("apply", "-f", "testdata/egress-allowances.yaml")
	s.expectHTTP("deploy/frontend", "http://backend:8080", "pod=demo/backend-")

	s.mustRun("delete", "-f", "testdata/delete-backend-egress.yaml")
	s.expectTCP("deploy/backend", "database", "5432", false)
	s.expectHTTP("deploy/frontend", "http://backend:8080", "pod=demo/backend-")

	// Restart: kill the agent; enforcement holds while it is down and an
	// open connection survives it and the new agent.
	conn := openKeepAlive(t, s.pod("deploy/frontend"), backendIP)
	conn.get(t, "before the restart")
	revBefore := s.status().Revision
	pid, _ := agent.RunningPID(s.paths())
	if pid == 0 {
		t.Fatal("no agent pid")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if p, _ := agent.RunningPID(s.paths()); p == 0 {
			break
		}
		if i > 100 {
			t.Fatalf("agent %d still holds its lock after SIGKILL", pid)
		}
		time.Sleep(100 * time.Millisecond)
	}
	conn.get(t, "while the agent is down")
	s.expectTCP("deploy/backend", "database", "5432", false)
	s.expectTCP("deploy/frontend", "database", "5432", false)
	s.expectHTTP("deploy/frontend", "http://backend:8080", "pod=demo/backend-")

	s.mustRun("up") // resumes from the state directory
	conn.get(t, "after the restart")
	st = s.status()
	if !st.Ready || st.PodsReady != 6 {
		t.Errorf("after restart: status %+v; want ready with 6 pods", st)
	}
	if st.Revision != revBefore {
		t.Logf("policy revision %d -> %d across the restart (tables re-pushed)", revBefore, st.Revision)
	}
	s.expectTCP("deploy/backend", "database", "5432", false)
	s.expectTCP("deploy/frontend", "database", "5432", false)
	s.expectHTTP("deploy/frontend", "http://backend:8080", "pod=demo/backend-")
	conn.close()
}

// hubbleSawDrop reads the recent flows from the agent's Hubble socket and
// reports whether one was dropped by the named policy.
func (s *sandboxUnderTest) hubbleSawDrop(policy string) bool {
	s.t.Helper()
	sock := s.status().HubbleSock
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		s.t.Fatalf("hubble: %v", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := observerpb.NewObserverClient(conn).GetFlows(ctx, &observerpb.GetFlowsRequest{Number: 1000})
	if err != nil {
		s.t.Fatalf("hubble GetFlows: %v", err)
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
		for _, p := range append(f.GetEgressDeniedBy(), f.GetIngressDeniedBy()...) {
			if p.GetName() == policy {
				return true
			}
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
		if out, errOut, code := s.run("down"); code != 0 {
			t.Fatalf("down #%d: exit %d: %s %s", i+1, code, out, errOut)
		}
	}
	if out, _, code := s.run("status"); code != 1 || !strings.Contains(out, "not running") {
		t.Errorf("status of a removed instance: exit %d, %q", code, out)
	}
}

// TestTwoInstances: two sandboxes run side by side with disjoint ranges;
// each works, and neither reaches the other's pods.
func TestTwoInstances(t *testing.T) {
	t.Parallel()
	a, b := newSandbox(t), newSandbox(t)
	a.mustRun("up", "-f", seed("sample-app.yaml"))
	b.mustRun("up", "-f", seed("sample-app.yaml"))
	sa, sb := a.status(), b.status()
	if !sa.Ready || !sb.Ready {
		t.Fatalf("not ready: %+v / %+v", sa, sb)
	}
	a.expectHTTP("deploy/frontend", "http://backend:8080", "pod=demo/backend-")
	b.expectHTTP("deploy/frontend", "http://backend:8080", "pod=demo/backend-")
	aIP := a.pod("deploy/backend").IPs[0]
	bIP := b.pod("deploy/backend").IPs[0]
	if aIP == bIP {
		t.Fatalf("both instances gave a backend %v", aIP)
	}
	b.expectHTTPBlocked("deploy/frontend", "http://"+aIP.String()+":8080")
	a.expectHTTPBlocked("deploy/frontend", "http://"+bIP.String()+":8080")
}
