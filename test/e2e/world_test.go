package e2e

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bulwark-net/bulwark/internal/agent"
	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/sandbox"
	"github.com/bulwark-net/bulwark/test/sandboxtest"
)

// worldManifest is one pod to look at the world from.
const worldManifest = `apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: Pod
metadata:
  name: world-client
  namespace: demo
  labels:
    app: world-client
spec:
  containers:
  - name: main
    image: busybox
`

// worldDenyEgress denies every egress of the world client.
const worldDenyEgress = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: world-client-deny-egress
  namespace: demo
spec:
  podSelector:
    matchLabels:
      app: world-client
  policyTypes: [Egress]
`

// TestWorldFlag: 'bulwark up --world NAME' makes NAME resolvable by the
// pods and served from the simulated world; a restarted agent keeps the
// names (without them it would remove the world); world traffic is policed
// like any other egress.
func TestWorldFlag(t *testing.T) {
	t.Parallel()
	in := sandboxtest.New(t, sandboxtest.Options{Prefix: "e2e-w", CombinedOutput: true})
	dir := t.TempDir()
	const client = "world-client"
	// resolve returns the address the pod's resolver gives name.
	resolve := func(name string) (netip.Addr, bool) {
		t.Helper()
		out, code := in.Exec(client, "getent", "hosts", name)
		if code != 0 {
			return netip.Addr{}, false
		}
		a, err := netip.ParseAddr(strings.Fields(out)[0])
		if err != nil {
			t.Fatalf("getent hosts %s: %q", name, out)
		}
		return a, true
	}
	// expectWorld checks the world serves exactly names, each resolving
	// to its world address inside WorldCIDR and answering HTTP on 80 and
	// 443 from the world namespace.
	expectWorld := func(when string, names ...string) {
		t.Helper()
		st, err := sandbox.ReadState("", in.Name)
		if err != nil {
			t.Fatal(err)
		}
		var have []string
		for _, h := range st.World {
			have = append(have, h.Name)
		}
		if !slices.Equal(have, names) {
			t.Errorf("%s: world serves %v, want %v", when, have, names)
		}
		for _, h := range st.World {
			ip, ok := resolve(h.Name)
			if !ok || ip != h.IP || !st.WorldCIDR.Contains(ip) {
				t.Errorf("%s: %s resolves to %v (ok=%v), want %v in %v", when, h.Name, ip, ok, h.IP, st.WorldCIDR)
			}
			for _, url := range []string{"http://" + h.Name + "/w", "http://" + h.Name + ":443/w"} {
				body, ok := in.HTTP(client, url)
				if !ok || !strings.Contains(body, "pod=world ") || !strings.Contains(body, "host="+h.Name) {
					t.Errorf("%s: GET %s: ok=%v %q", when, url, ok, body)
				}
			}
		}
	}

	manifest := filepath.Join(dir, "world.yaml")
	if err := os.WriteFile(manifest, []byte(worldManifest), 0o644); err != nil {
		t.Fatal(err)
	}
	// A bad name stops up before anything starts.
	if out, _, code := in.Run("up", "-f", manifest, "--world", "not_a_name"); code == 0 || !strings.Contains(out, "not_a_name") {
		t.Fatalf("up --world not_a_name: exit %d %q", code, out)
	}
	if pid, _ := agent.RunningPID(in.Paths()); pid != 0 {
		t.Fatalf("agent %d started despite a bad --world", pid)
	}

	in.MustRun("up", "-f", manifest, "--world", "api.example.com", "--world", "WWW.Example.org.")
	want := []string{"api.example.com", "www.example.org"}
	expectWorld("after up", want...)
	if in.Resolves(client, "other.example.com") {
		t.Errorf("a name not given to --world resolves")
	}

	// Stop the agent, keep the sandbox; up without flags resumes it.
	pid, _ := agent.RunningPID(in.Paths())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	err := in.Client().Shutdown(ctx, agentapi.ShutdownRequest{Destroy: false})
	cancel()
	if err != nil {
		t.Fatalf("stop agent: %v", err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if p, _ := agent.RunningPID(in.Paths()); p == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent %d still running a minute after shutdown", pid)
		}
	}
	in.MustRun("up")
	expectWorld("after the agent restarted", want...)

	// World traffic crosses the pod's enforcement like any egress.
	policy := filepath.Join(dir, "deny.yaml")
	if err := os.WriteFile(policy, []byte(worldDenyEgress), 0o644); err != nil {
		t.Fatal(err)
	}
	in.MustRun("apply", "-f", policy)
	st, err := sandbox.ReadState("", in.Name)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range st.World {
		in.ExpectHTTPBlocked(client, "http://"+h.IP.String()+"/w")
	}
}
