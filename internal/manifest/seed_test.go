package manifest

import (
	"path/filepath"
	"runtime"
	"testing"
)

func seedDir(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "testdata", "seed")
}

// Every seed document decodes; the kinds Bulwark does not model are kept as
// Unsupported.
func TestSeedDecodes(t *testing.T) {
	set, errs, err := Load(seedDir(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range errs {
		t.Errorf("decode: %v", e)
	}
	counts := set.Counts()
	want := map[string]int{
		"Namespace": 4, "Deployment": 3, "Service": 3, "NetworkPolicy": 1,
		"CiliumNetworkPolicy": 13, "CiliumClusterwideNetworkPolicy": 2,
		"ServiceMonitor": 1, "CiliumEnvoyConfig": 1, "": 1,
	}
	for k, n := range want {
		if counts[k] != n {
			t.Errorf("count %q = %d, want %d (all: %v)", k, counts[k], n, counts)
		}
	}
	if len(set.Unsupported) != 3 {
		t.Errorf("unsupported = %d, want 3", len(set.Unsupported))
	}
	for _, u := range set.Unsupported {
		if u.Note == "" {
			t.Errorf("unsupported %s has no note", u.Kind)
		}
	}
}
