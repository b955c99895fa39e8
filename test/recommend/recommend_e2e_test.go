// Package recommend checks `bulwark policy recommend` end to end: real
// traffic in a sandbox becomes flows, the flows become policies, the
// offline checker (`bulwark policy check`) proves they allow exactly what
// was seen, and applied to the same sandbox they keep the application
// working while a connection that was never made is dropped.
//
// The tests need root; each uses its own instance.
package recommend

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulwark-net/bulwark/test/sandboxtest"
)

func TestMain(m *testing.M) { sandboxtest.Main(m) }

type checked struct {
	Src, Dst string
	Port     int
	Verdict  string
	Policies []string
}

func TestRecommendFromLiveTraffic(t *testing.T) {
	t.Parallel()
	in := sandboxtest.New(t, sandboxtest.Options{Prefix: "rec", Timeout: 3 * time.Minute})
	in.MustRun("up", "-f", sandboxtest.Seed(t, "sample-app.yaml"))

	// The application's traffic: frontend calls backend by name (DNS,
	// then HTTP), backend opens its database.
	in.ExpectHTTP("deploy/frontend", "http://backend:8080", "pod=demo/backend-")
	in.ExpectTCP("deploy/backend", "database", "5432", true)

	// status reports the observer's health, as hubble status does.
	var st struct {
		Flows *struct{ Held, Capacity, Seen, LostDatapath, LostReaders uint64 }
	}
	if err := json.Unmarshal([]byte(in.MustRun("status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	if st.Flows == nil || st.Flows.Seen == 0 || st.Flows.Capacity == 0 || st.Flows.Held > st.Flows.Capacity || st.Flows.Held > st.Flows.Seen {
		t.Errorf("status flows %+v: want flows seen, held within capacity", st.Flows)
	}
	if text := in.MustRun("status"); !strings.Contains(text, "Current/Max") {
		t.Errorf("status text has no Current/Max flows line:\n%s", text)
	}

	for _, kind := range []string{"networkpolicy", "cnp"} {
		var out string
		sandboxtest.Eventually(sandboxtest.FlowDelay, func() bool {
			out = in.MustRun("policy", "recommend", "-n", "demo", "--since", "1h", "--kind", kind)
			return strings.Contains(out, "database-recommended") && strings.Contains(out, "backend-recommended")
		})
		if !strings.Contains(out, "database-recommended") {
			t.Logf("flows held:\n%.4000s\nstatus:\n%s", in.MustRun("observe", "--last", "1000", "-o", "compact"), in.MustRun("status"))
		}
		for _, want := range []string{"frontend-recommended", "backend-recommended", "database-recommended", "k8s-app: kube-dns"} {
			if !strings.Contains(out, want) {
				t.Errorf("--kind %s: recommendation lacks %q:\n%s", kind, want, out)
			}
		}
		dir := t.TempDir()
		rec := filepath.Join(dir, "recommended.yaml")
		if err := os.WriteFile(rec, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		root, err := sandboxtest.RepoRoot()
		if err != nil {
			t.Fatal(err)
		}
		// The checker's state: the app, the cluster DNS pod, the
		// recommendation. Pods of a Deployment are <name>-0 there.
		flows := filepath.Join(dir, "flows.jsonl")
		lines := []string{
			`{"src":"demo/frontend-0","dst":"demo/backend-0","port":8080,"protocol":"TCP"}`,
			`{"src":"demo/backend-0","dst":"demo/database-0","port":5432,"protocol":"TCP"}`,
			`{"src":"demo/frontend-0","dst":"kube-system/coredns-0","port":53,"protocol":"UDP"}`,
			`{"src":"demo/backend-0","dst":"kube-system/coredns-0","port":53,"protocol":"UDP"}`,
			`{"src":"demo/frontend-0","dst":"demo/database-0","port":5432,"protocol":"TCP"}`,
			`{"src":"demo/database-0","dst":"demo/backend-0","port":8080,"protocol":"TCP"}`,
		}
		want := []string{"allowed", "allowed", "allowed", "allowed", "denied", "denied"}
		if err := os.WriteFile(flows, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		// policy check is offline: no instance flags.
		cmd := exec.Command(sandboxtest.Binary(), "policy", "check", "-f", sandboxtest.Seed(t, "sample-app.yaml"),
			"-f", filepath.Join(root, "internal", "recommend", "testdata", "kube-dns.yaml"), "-f", rec,
			"--flows", flows, "-o", "json")
		resBytes, err := cmd.Output()
		if err != nil {
			t.Fatalf("--kind %s: policy check: %v\n%s", kind, err, out)
		}
		res := string(resBytes)
		var got []checked
		sc := bufio.NewScanner(strings.NewReader(res))
		for sc.Scan() {
			var c checked
			if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
				t.Fatalf("policy check -o json line %q: %v", sc.Text(), err)
			}
			got = append(got, c)
		}
		if len(got) != len(want) {
			t.Fatalf("--kind %s: policy check answered %d lines, want %d:\n%s", kind, len(got), len(want), res)
		}
		for i, c := range got {
			if c.Verdict != want[i] {
				t.Errorf("--kind %s: policy check %s -> %s:%d is %s, want %s (policies %v)", kind, c.Src, c.Dst, c.Port, c.Verdict, want[i], c.Policies)
			}
		}
	}

	// Applied live, each form keeps the application working and drops
	// what it never did.
	for _, kind := range []string{"networkpolicy", "cnp"} {
		out := in.MustRun("policy", "recommend", "-n", "demo", "--kind", kind)
		rec := filepath.Join(t.TempDir(), "recommended.yaml")
		if err := os.WriteFile(rec, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		in.MustRun("apply", "-f", rec)
		in.ExpectHTTP("deploy/frontend", "http://backend:8080", "pod=demo/backend-")
		in.ExpectTCP("deploy/backend", "database", "5432", true)
		in.ExpectTCP("deploy/frontend", "database", "5432", false)
		in.ExpectTCP("deploy/database", "backend", "8080", false)
		in.MustRun("delete", "-f", rec)
	}
}
