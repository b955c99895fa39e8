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

const seedPath = "../../testdata/seed"

func TestPolicyValidateSeed(t *testing.T) {
	var out bytes.Buffer
	if err := runPolicyValidate(&out, &policyValidateOptions{files: []string{seedPath}, output: "text"}); err != nil {
		t.Fatalf("seed fails validation: %v\n%s", err, out.String())
	}
	text := out.String()
	for _, want := range []string{
		"WARNING: " + seedPath + "/clusterwide-policy.yaml:doc 0: CiliumClusterwideNetworkPolicy global-deny-external-access: spec.egress[0].toCIDRSet[0].except: except 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 of cidr 0.0.0.0/0 is meaningless",
		"INFO: " + seedPath + "/rate-limiting-policy.yaml:doc 1: CiliumEnvoyConfig backend/rate-limit-config:",
		"29 documents (",
		"WARNING: " + seedPath + "/frontend-to-backend.yaml:doc 0: CiliumNetworkPolicy demo/frontend-to-backend: spec.ingress[0]: this ingress allow never takes effect",
		"0 errors, 12 warnings",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}

	// --strict turns the warnings into a failure.
	out.Reset()
	err := runPolicyValidate(&out, &policyValidateOptions{files: []string{seedPath}, strict: true, output: "text"})
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 1 {
		t.Errorf("--strict: err = %v, want exit 1", err)
	}
}

func TestPolicyValidateErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	doc := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: demo}\nspec:\n  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports:\n      - port: \"99999\"\n"
	if err := os.WriteFile(bad, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := runPolicyValidate(&out, &policyValidateOptions{files: []string{bad}, output: "json"})
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 1 {
		t.Fatalf("err = %v, want exit 1", err)
	}
	var rep validateReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("json output: %v\n%s", err, out.String())
	}
	if rep.OK || rep.Errors != 1 || rep.Findings[0].Field != "spec.ingress[0].toPorts[0].ports[0].port" || rep.Findings[0].Source.File != bad {
		t.Errorf("report %+v", rep)
	}

	err = runPolicyValidate(&out, &policyValidateOptions{files: []string{filepath.Join(dir, "missing.yaml")}, output: "text"})
	if err == nil || !strings.Contains(err.Error(), "missing.yaml: no such file or directory") {
		t.Errorf("missing file: %v", err)
	}
	if err := runPolicyValidate(&out, &policyValidateOptions{files: []string{bad}, output: "yaml"}); err == nil {
		t.Error("bad output format accepted")
	}
}

// A bad endPort is one finding, under .endPort (not also under .port).
func TestPolicyValidateNegativeEndPortOnce(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "endport.yaml")
	doc := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: demo}\nspec:\n  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports:\n      - port: \"80\"\n        endPort: -5\n"
	if err := os.WriteFile(bad, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	_ = runPolicyValidate(&out, &policyValidateOptions{files: []string{bad}, output: "json"})
	var rep validateReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("json output: %v\n%s", err, out.String())
	}
	if rep.Errors != 1 || len(rep.Findings) != 1 || rep.Findings[0].Field != "spec.ingress[0].toPorts[0].ports[0].endPort" {
		t.Errorf("findings %+v; want one error under .endPort", rep.Findings)
	}
}

// With a running instance, a namespaced policy in a namespace that
// neither the input nor the instance has is refused (as kubectl apply);
// offline it is not checked.
func TestPolicyValidateNamespaceExists(t *testing.T) {
	dir := t.TempDir()
	write := func(name, doc string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ghost := write("ghost.yaml", `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: ghost}
spec: {podSelector: {}}
`)
	demo := write("demo.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: demo}
spec: {endpointSelector: {}, ingress: [{}]}
`)
	ns := write("ns.yaml", `apiVersion: v1
kind: Namespace
metadata: {name: ghost}
`)
	out, err := runAgentCmd(t, "policy", "validate", "-f", ghost)
	var ee *ExitError
	if !errors.As(err, &ee) || !strings.Contains(out, `ERROR: `+ghost+`:doc 0: NetworkPolicy ghost/deny: metadata.namespace: namespaces "ghost" not found: neither in the input nor in the running instance "t"`) {
		t.Errorf("unknown namespace with a running instance: %v\n%s", err, out)
	}
	if out, err := runAgentCmd(t, "policy", "validate", "-f", demo); err != nil {
		t.Errorf("namespace of the instance: %v\n%s", err, out)
	}
	if out, err := runAgentCmd(t, "policy", "validate", "-f", ghost, "-f", ns); err != nil {
		t.Errorf("namespace defined in the input: %v\n%s", err, out)
	}
	if out, err := runAgentCmd(t, "policy", "validate", "--offline", "-f", ghost); err != nil {
		t.Errorf("--offline: %v\n%s", err, out)
	}
	// No instance running: offline, not checked.
	var buf bytes.Buffer
	if err := runPolicyValidate(&buf, &policyValidateOptions{files: []string{ghost}, output: "text",
		inst: instanceFlags{instance: "t", runDir: t.TempDir(), stateRoot: t.TempDir()}}); err != nil {
		t.Errorf("no instance: %v\n%s", err, buf.String())
	}
}
