package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func seedFile(name string) string { return filepath.Join("..", "..", "testdata", "seed", name) }

// The JSON output is a contract: exactly these fields, one line per flow.
func TestPolicyCheckJSONContract(t *testing.T) {
	flows := filepath.Join(t.TempDir(), "flows.jsonl")
	if err := os.WriteFile(flows, []byte(`{"src": "demo/frontend-0", "dst": "demo/backend-0", "port": 8080, "protocol": "TCP"}
{"src": "198.51.100.7", "dst": "demo/backend-1", "port": 8080, "protocol": "TCP"}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := runPolicyCheck(nil, &out, policyCheckOptions{
		files:  []string{seedFile("sample-app.yaml"), seedFile("default-deny.yaml"), seedFile("frontend-to-backend.yaml")},
		flows:  flows,
		output: "json",
	})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d output lines: %q", len(lines), out.String())
	}
	want := []string{
		`{"src":"demo/frontend-0","dst":"demo/backend-0","port":8080,"protocol":"TCP","verdict":"denied","egress":"denied","ingress":"allowed","policies":["demo/default-deny-all"]}`,
		`{"src":"198.51.100.7","dst":"demo/backend-1","port":8080,"protocol":"TCP","verdict":"denied","egress":"allowed","ingress":"denied","policies":["demo/default-deny-all","demo/frontend-to-backend"]}`,
	}
	for i, l := range lines {
		if l != want[i] {
			t.Errorf("line %d:\n got %s\nwant %s", i+1, l, want[i])
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil || len(m) != 8 {
			t.Errorf("line %d: %d fields, %v", i+1, len(m), err)
		}
	}

	// A bad line: an error with its number, and no output.
	if err := os.WriteFile(flows, []byte("{\"src\": \"demo/frontend-0\", \"dst\": \"demo/backend-0\", \"port\": 1}\n{\"src\": 1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	err = runPolicyCheck(nil, &out, policyCheckOptions{files: []string{seedFile("sample-app.yaml")}, flows: flows, output: "json"})
	if err == nil || !strings.Contains(err.Error(), "line 2") || out.Len() != 0 {
		t.Errorf("bad line: err %v, output %q", err, out.String())
	}
	if err := runPolicyCheck(nil, &out, policyCheckOptions{files: []string{seedFile("sample-app.yaml")}, flows: flows, output: "yaml"}); err == nil {
		t.Error("-o yaml accepted")
	}
}

func TestPolicyTraceFlags(t *testing.T) {
	var out bytes.Buffer
	err := runPolicyTrace(&out, policyTraceOptions{files: []string{filepath.Join("..", "..", "testdata", "seed")},
		src: "demo:frontend-0", dst: "demo:backend-0", dport: 8080, proto: "TCP"})
	if err != nil || !strings.Contains(out.String(), "Final verdict: DENIED") {
		t.Errorf("trace: %v\n%s", err, out.String())
	}
	if err := runPolicyTrace(&out, policyTraceOptions{files: []string{"x"}, src: "demo/frontend-0", dst: "demo:b", dport: 1}); err == nil || !strings.Contains(err.Error(), "NAMESPACE:POD") {
		t.Errorf("bad --src-k8s-pod: %v", err)
	}
	if err := runPolicyTrace(&out, policyTraceOptions{files: []string{"x"}, src: "demo:a", srcID: 256, dst: "demo:b", dport: 1}); err == nil || !strings.Contains(err.Error(), "exactly one") {
		t.Errorf("both --src-k8s-pod and --src-identity: %v", err)
	}
	// As in the article: by identity; world (2) is outside the cluster.
	out.Reset()
	err = runPolicyTrace(&out, policyTraceOptions{files: []string{seedFile("sample-app.yaml"), seedFile("default-deny.yaml")},
		srcID: 2, dst: "demo:backend-0", dport: 8080, proto: "TCP"})
	if err != nil || !strings.Contains(out.String(), "Ingress of demo/backend-0 from identity reserved:world: DENIED by default deny") {
		t.Errorf("trace by identity: %v\n%s", err, out.String())
	}
}

// "expect": lines whose verdict differs come first and make the exit
// status 1; without a differing line (or without expect) it stays 0.
func TestPolicyCheckExpect(t *testing.T) {
	files := []string{seedFile("sample-app.yaml"), seedFile("default-deny.yaml"), seedFile("frontend-to-backend.yaml")}
	flows := filepath.Join(t.TempDir(), "flows.jsonl")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(flows, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := func(output string) (string, error) {
		var out bytes.Buffer
		err := runPolicyCheck(nil, &out, policyCheckOptions{files: files, flows: flows, output: output})
		return out.String(), err
	}

	write(`{"src": "198.51.100.7", "dst": "demo/backend-1", "port": 8080, "expect": "denied"}
{"src": "demo/frontend-0", "dst": "demo/backend-0", "port": 8080, "expect": "allowed"}
{"src": "demo/frontend-0", "dst": "demo/backend-0", "port": 9090}
`)
	out, err := run("json")
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 1 {
		t.Fatalf("a differing line: err %v, want exit status 1", err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], `"dst":"demo/backend-0","port":8080`) || !strings.Contains(lines[0], `"expect":"allowed"`) {
		t.Fatalf("the differing line must come first:\n%s", out)
	}
	if !strings.Contains(lines[1], `"src":"198.51.100.7"`) || !strings.Contains(lines[1], `"expect":"denied"`) || strings.Contains(lines[2], "expect") {
		t.Errorf("the other lines in input order, expect repeated only where given:\n%s", out)
	}
	out, _ = run("table")
	if rows := strings.Split(out, "\n"); len(rows) < 2 || !strings.Contains(rows[1], "DENIED (expected ALLOWED)") {
		t.Errorf("table: the differing line first, marked:\n%s", out)
	}

	write(`{"src": "demo/frontend-0", "dst": "demo/backend-0", "port": 8080, "expect": "denied"}
{"src": "demo/frontend-0", "dst": "demo/backend-0", "port": 9090}
`)
	if _, err := run("json"); err != nil {
		t.Errorf("every expect met: %v, want exit status 0", err)
	}
	write(`{"src": "demo/frontend-0", "dst": "demo/backend-0", "port": 8080, "expect": "deny"}` + "\n")
	if out, err := run("json"); err == nil || !strings.Contains(err.Error(), `line 1: "expect" must be "allowed" or "denied"`) || out != "" {
		t.Errorf("bad expect: %v %q", err, out)
	}
}
