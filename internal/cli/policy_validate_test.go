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
