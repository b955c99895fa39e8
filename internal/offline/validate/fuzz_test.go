package validate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bulwark-net/bulwark/internal/manifest"
)

// FuzzValidate: decoding, validating and linting never panic, and every
// finding names its file.
func FuzzValidate(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join(seedDir, "*.yaml"))
	for _, s := range seeds {
		if data, err := os.ReadFile(s); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte(cnp("endpointSelector: {}\negress:\n- toCIDRSet:\n  - cidr: 0.0.0.0/0\n    except: [10.0.0.0/8]\n- toFQDNs: [{matchPattern: \"*.a.com\"}]\n")))
	f.Add([]byte(cnp("endpointSelector: {matchExpressions: [{key: 'k8s:a', operator: In, values: [x]}]}\ningress:\n- fromCIDRSet: [{cidr: '::/0', except: ['::1/128']}]\n  icmps: [{fields: [{type: 8}]}]\n")))
	f.Add([]byte(netpol("podSelector: {}\nigress: []\n")))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, errs := manifest.Decode("fuzz.yaml", data)
		for _, fi := range Run(manifest.NewSet(objs...), errs, Options{}) {
			if !strings.HasPrefix(fi.String(), fi.Severity.String()+": fuzz.yaml:doc ") {
				t.Fatalf("finding without source: %s", fi)
			}
		}
	})
}
