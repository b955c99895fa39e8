package policy_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/policy"
)

// FuzzUpsertManifest: whatever documents decode, loading them into a
// repository never panics, and a rejected batch leaves it empty.
func FuzzUpsertManifest(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("..", "..", "testdata", "seed", "*.yaml"))
	for _, s := range seeds {
		if b, err := os.ReadFile(s); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(baseState))
	f.Fuzz(func(t *testing.T, doc []byte) {
		objs, _ := manifest.Decode("fuzz.yaml", doc)
		var in []any
		for _, o := range objs {
			if _, unsupported := o.Obj.(*manifest.Unsupported); !unsupported {
				in = append(in, o.Obj)
			}
		}
		repo := policy.NewRepository(policy.Options{})
		if _, err := repo.Upsert(in...); err != nil {
			if snap := repo.Snapshot(); len(snap.Endpoints) != 0 || len(snap.Policies()) != 0 || snap.Revision != 0 {
				t.Fatalf("rejected batch half-applied: %v", err)
			}
			return
		}
		snap := repo.Snapshot()
		for _, ep := range snap.Endpoints {
			if ep.Policy == nil {
				t.Fatalf("endpoint %s without policy", ep.Key)
			}
		}
	})
}
