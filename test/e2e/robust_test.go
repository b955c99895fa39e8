package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bulwark-net/bulwark/internal/agent"
	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/test/sandboxtest"
)

const livenessPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: liveness
  namespace: demo
spec:
  endpointSelector:
    matchLabels:
      app: a
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: b
`

func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestStoppedAgent: with the agent stopped (SIGSTOP), apply and status
// give up after --timeout naming the agent's pid; the apply whose client
// gave up is not applied when the agent resumes, and the agent logs so.
func TestStoppedAgent(t *testing.T) {
	t.Parallel()
	in := sandboxtest.New(t, sandboxtest.Options{Prefix: "e2e-stop", CombinedOutput: true})
	in.MustRun("up", "-f", writeTemp(t, "ns.yaml", namespaceOnly))
	pol := writeTemp(t, "pol.yaml", livenessPolicy)
	pid, _ := agent.RunningPID(in.Paths())
	if pid == 0 {
		t.Fatal("no agent pid")
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	defer resume()
	want := "agent not responding (pid " + strconv.Itoa(pid)
	for _, args := range [][]string{{"apply", "-f", pol, "--timeout", "2s"}, {"status", "--timeout", "2s"}} {
		out, _, code := in.Run(args...)
		if code == 0 || !strings.Contains(out, want) || !strings.Contains(out, "did not answer within 2s") {
			t.Errorf("%s with the agent stopped: exit %d, want %q:\n%s", args[0], code, want, out)
		}
	}
	resume()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := in.Client().Status(ctx); err != nil {
		t.Fatalf("status after SIGCONT: %v", err)
	}
	pols, err := in.Client().Policies(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(pols) != 0 {
		t.Errorf("policies after the abandoned apply: %+v; want none (the client gave up before it was applied)", pols)
	}
	// The abandoned request is read when the agent gets to it: wait for
	// its log line (the policy check above holds either way).
	for i := 0; !strings.Contains(in.AgentLog(), "abandoned by its client"); i++ {
		if i > 100 {
			t.Errorf("agent log does not report the abandoned change:\n%s", in.AgentLog())
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if pols, _ := in.Client().Policies(ctx); len(pols) != 0 {
		t.Errorf("policies once the abandoned apply was read: %+v; want none", pols)
	}
	// The agent works again.
	in.MustRun("apply", "-f", pol)
	if pols, _ := in.Client().Policies(ctx); len(pols) != 1 {
		t.Errorf("policies after a normal apply: %+v", pols)
	}
}

func agentRSS(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return kb * 1024
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// TestLargeInputRefused: objects over the API server's limits are refused
// by validate and apply naming file and object; the agent, sent one
// directly, refuses it too, and its memory returns near the baseline.
func TestLargeInputRefused(t *testing.T) {
	t.Parallel()
	in := sandboxtest.New(t, sandboxtest.Options{Prefix: "e2e-big", CombinedOutput: true})
	in.MustRun("up", "-f", writeTemp(t, "ns.yaml", namespaceOnly))
	huge := strings.Repeat("x", 10<<20)
	doc := "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: huge\n  annotations:\n    note: \"" + huge + "\"\n"
	file := writeTemp(t, "huge.yaml", doc)
	for _, args := range [][]string{{"policy", "validate", "-f", file}, in.Args("apply", "-f", file)} {
		out, code := runBinary(t, args...)
		if code == 0 || !strings.Contains(out, file) || !strings.Contains(out, "Namespace huge") || !strings.Contains(out, "1.5 MiB") {
			t.Errorf("%s of a 10 MiB object: exit %d, want file, object and limit named:\n%.500s", strings.Join(args, " "), code, out)
		}
	}
	pid, _ := agent.RunningPID(in.Paths())
	before := agentRSS(t, pid)
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		_, err := in.Client().Apply(ctx, agentapi.ApplyRequest{Documents: []agentapi.Document{{Source: "huge.yaml", Data: []byte(doc)}}})
		if err == nil || !strings.Contains(err.Error(), "Namespace huge") {
			t.Fatalf("agent sent a 10 MiB object: %v; want refused naming it", err)
		}
	}
	time.Sleep(time.Second) // the answer is written before the memory is returned
	after := agentRSS(t, pid)
	t.Logf("agent RSS %d MiB before, %d MiB after three refused 10 MiB objects", before>>20, after>>20)
	if after > before+32<<20 {
		t.Errorf("agent RSS grew from %d to %d MiB after refused objects", before>>20, after>>20)
	}
}

// TestNonRootCommands: run by an ordinary user, up says root is needed
// (not that the instance has no saved state), and status that the agent's
// API is root only.
func TestNonRootCommands(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the binary as another user")
	}
	dir, err := os.MkdirTemp("", "bwk-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "bulwark")
	data, err := os.ReadFile(sandboxtest.Binary())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	manifest := filepath.Join(dir, "ns.yaml")
	if err := os.WriteFile(manifest, []byte(namespaceOnly), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"up", "--instance", "e2e-nonroot"}, "needs root"},
		{[]string{"up", "--instance", "e2e-nonroot", "-f", manifest}, "needs root"},
		{[]string{"status", "--instance", "e2e-nonroot"}, "root"},
	} {
		cmd := exec.Command(bin, c.args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) || strings.Contains(string(out), "saved state") {
			t.Errorf("%v as nobody: %v, want %q:\n%s", c.args, err, c.want, out)
		}
	}
}

// TestKillDuringApply: the agent SIGKILL-ed at random points while it
// applies (or deletes) a 1000-policy file comes back with the old set or
// the new one, never a mix, and ready (its datapath synced to that state).
func TestKillDuringApply(t *testing.T) {
	t.Parallel()
	in := sandboxtest.New(t, sandboxtest.Options{Prefix: "e2e-kill", CombinedOutput: true})
	in.MustRun("up", "-f", writeTemp(t, "ns.yaml", namespaceOnly))
	var docs []string
	for i := 0; i < 1000; i++ {
		docs = append(docs, fmt.Sprintf("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: kill-%d\n  namespace: demo\nspec:\n  endpointSelector:\n    matchLabels:\n      app: a\n  egress:\n  - toCIDR:\n    - 203.0.%d.%d/32\n", i, i/250, i%250+1))
	}
	file := "1k.yaml"
	ctx := context.Background()
	count := func() int {
		pols, err := in.Client().Policies(ctx)
		if err != nil {
			t.Fatalf("policies: %v", err)
		}
		return len(pols)
	}
	data := []byte(strings.Join(docs, "---\n"))
	for round := 0; round < 8; round++ {
		before := count()
		verb := "apply"
		after := 1000
		if before == 1000 {
			verb, after = "delete", 0
		}
		// The request goes straight to the agent (the CLI's own checks
		// take most of an apply's time), and the kills are spread over
		// the agent's work: before, during and after the commit.
		req := agentapi.ApplyRequest{Documents: []agentapi.Document{{Source: file, Data: data}}}
		done := make(chan struct{})
		go func() {
			defer close(done)
			if verb == "apply" {
				in.Client().Apply(ctx, req)
			} else {
				in.Client().Delete(ctx, req)
			}
		}()
		delay := time.Duration(round*round*12) * time.Millisecond
		time.Sleep(delay)
		pid, _ := agent.RunningPID(in.Paths())
		if pid == 0 {
			t.Fatal("no agent pid")
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-done
		for i := 0; ; i++ {
			if p, _ := agent.RunningPID(in.Paths()); p == 0 {
				break
			}
			if i > 100 {
				t.Fatalf("agent %d holds its lock after SIGKILL", pid)
			}
			time.Sleep(100 * time.Millisecond)
		}
		in.MustRun("up")
		got := count()
		st := in.Status()
		t.Logf("round %d: %s killed after %s: %d -> %d policies", round, verb, delay, before, got)
		if got != before && got != after {
			t.Fatalf("round %d: %d policies after a kill during %s of %d -> %d: a mix", round, got, verb, before, after)
		}
		if !st.Ready || st.Policies != got {
			t.Errorf("round %d: after restart status ready=%v policies=%d errors=%v; want ready with %d", round, st.Ready, st.Policies, st.Errors, got)
		}
	}
}

// TestStateDirUnwritable: a change the state directory refuses to store
// is refused whole with the reason; the agent keeps running, and takes
// changes again once the directory is writable.
func TestStateDirUnwritable(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("chattr"); err != nil {
		t.Skip("needs chattr (root ignores file modes; an immutable directory stops it)")
	}
	in := sandboxtest.New(t, sandboxtest.Options{Prefix: "e2e-ro", CombinedOutput: true})
	in.MustRun("up", "-f", writeTemp(t, "ns.yaml", namespaceOnly))
	dir := in.Paths().StateDir
	if out, err := exec.Command("chattr", "+i", dir).CombinedOutput(); err != nil {
		t.Skipf("chattr +i %s: %v: %s", dir, err, out)
	}
	t.Cleanup(func() { exec.Command("chattr", "-i", dir).Run() })
	pol := writeTemp(t, "pol.yaml", livenessPolicy)
	out, _, code := in.Run("apply", "-f", pol)
	if code == 0 || !strings.Contains(out, "not applied") || !strings.Contains(out, dir) {
		t.Errorf("apply with the state directory immutable: exit %d, want refused naming %s:\n%s", code, dir, out)
	}
	ctx := context.Background()
	if pols, err := in.Client().Policies(ctx); err != nil || len(pols) != 0 {
		t.Errorf("policies after the refused apply: %+v, %v; want none", pols, err)
	}
	if out, err := exec.Command("chattr", "-i", dir).CombinedOutput(); err != nil {
		t.Fatalf("chattr -i: %v: %s", err, out)
	}
	in.MustRun("apply", "-f", pol)
	if pols, _ := in.Client().Policies(ctx); len(pols) != 1 {
		t.Errorf("policies after apply: %+v; want 1", pols)
	}
}

// TestCIDRIdentitiesReleased: 900 toCIDR /32 policies applied and deleted
// leave no identities behind once the grace period is over: the persisted
// identities and the identity list return to their baseline.
func TestCIDRIdentitiesReleased(t *testing.T) {
	t.Parallel()
	in := sandboxtest.New(t, sandboxtest.Options{Prefix: "e2e-ids", CombinedOutput: true})
	ns := writeTemp(t, "ns.yaml", namespaceOnly)
	in.MustRun("up", "-f", ns, "--identity-grace", "1s")
	var docs []string
	for i := 0; i < 900; i++ {
		docs = append(docs, fmt.Sprintf("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: cidr-%d\n  namespace: demo\nspec:\n  endpointSelector:\n    matchLabels:\n      app: a\n  egress:\n  - toCIDR:\n    - 203.0.%d.%d/32\n", i, i/250, i%250+1))
	}
	pols := writeTemp(t, "cidr.yaml", strings.Join(docs, "---\n"))
	file := filepath.Join(in.Paths().StateDir, "identities.json")
	size := func() int64 {
		fi, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	ctx := context.Background()
	ids := func() int {
		l, err := in.Client().Identities(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(l)
	}
	pid, _ := agent.RunningPID(in.Paths())
	baseSize, baseIDs, baseRSS := size(), ids(), agentRSS(t, pid)
	in.MustRun("apply", "-f", pols)
	fullSize, fullIDs, fullRSS := size(), ids(), agentRSS(t, pid)
	in.MustRun("delete", "-f", pols)
	// The delete's sync starts the grace period; the next sync after it
	// frees them (any change syncs; the agent also resyncs every 30 s).
	time.Sleep(1500 * time.Millisecond)
	in.MustRun("apply", "-f", ns)
	endSize, endIDs, endRSS := size(), ids(), agentRSS(t, pid)
	t.Logf("identities.json %d -> %d -> %d bytes; identities %d -> %d -> %d; agent RSS %d -> %d -> %d MiB",
		baseSize, fullSize, endSize, baseIDs, fullIDs, endIDs, baseRSS>>20, fullRSS>>20, endRSS>>20)
	if fullIDs < baseIDs+900 || fullSize <= baseSize {
		t.Fatalf("900 CIDR policies: %d identities, %d bytes; want 900 more than %d", fullIDs, fullSize, baseIDs)
	}
	if endSize != baseSize || endIDs != baseIDs {
		t.Errorf("after delete and the grace period: %d bytes, %d identities; want the baseline %d, %d", endSize, endIDs, baseSize, baseIDs)
	}
	if endRSS > baseRSS+16<<20 {
		t.Errorf("agent RSS %d MiB after the identities went; baseline %d MiB", endRSS>>20, baseRSS>>20)
	}
}
