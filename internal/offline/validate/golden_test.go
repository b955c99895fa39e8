package validate

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bulwark-net/bulwark/internal/manifest"
)

var update = flag.Bool("update", false, "rewrite golden files")

const seedDir = "../../../testdata/seed"

// The seed directory validates without errors (its CiliumEnvoyConfig's
// rate limit is enforced by the HTTP proxy); its warnings (including the
// clusterwide policy whose except is shadowed by 0.0.0.0/0) are pinned in a
// golden file.
func TestSeedGolden(t *testing.T) {
	set, errs, err := manifest.Load(seedDir)
	if err != nil {
		t.Fatal(err)
	}
	fs := Run(set, errs, Options{})
	var b strings.Builder
	for _, f := range fs {
		b.WriteString(strings.ReplaceAll(f.String(), seedDir+"/", ""))
		b.WriteByte('\n')
	}
	nErr, nWarn, _ := Count(fs)
	if nErr != 0 || !strings.Contains(b.String(), "INFO: rate-limiting-policy.yaml:doc 1: CiliumEnvoyConfig backend/rate-limit-config: CiliumEnvoyConfig: its local_ratelimit token bucket is enforced") {
		t.Errorf("seed has %d errors:\n%s", nErr, b.String())
	}
	if nWarn == 0 {
		t.Errorf("seed has no warnings")
	}
	golden := filepath.Join("testdata", "seed.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if b.String() != string(want) {
		t.Errorf("findings differ from %s (go test -update to accept):\ngot:\n%s\nwant:\n%s", golden, b.String(), want)
	}
	// Lint (a) on the clusterwide policy is the point of the golden file.
	found := false
	for _, f := range fs {
		if f.Rule == "lint/cidr-except-shadowed" && f.Name == "global-deny-external-access" &&
			f.Field == "spec.egress[0].toCIDRSet[0].except" && strings.Contains(f.Message, "allows all egress") {
			found = true
		}
	}
	if !found {
		t.Error("no shadowed-except warning for clusterwide-policy.yaml")
	}
}
