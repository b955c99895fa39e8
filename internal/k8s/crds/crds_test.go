package crds

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// The manifests in deploy/helm/bulwark/crds/ are what All returns.
func TestGeneratedUpToDate(t *testing.T) {
	all, err := All()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join("..", "..", "..", "deploy", "helm", "bulwark", "crds")
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(all) {
		t.Errorf("%s has %d manifests, want %d: run go generate ./internal/k8s/crds", dir, len(files), len(all))
	}
	for _, c := range all {
		want, err := Manifest(c)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dir, FileName(c)))
		if err != nil {
			t.Fatalf("%v: run go generate ./internal/k8s/crds", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run go generate ./internal/k8s/crds", FileName(c))
		}
	}
}

func TestAllColumnsAndLabels(t *testing.T) {
	all, err := All()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, c := range all {
		names[c.Name] = true
		if c.Labels[SchemaVersionLabel] != SchemaVersion {
			t.Errorf("%s: label %s = %q, want %q", c.Name, SchemaVersionLabel, c.Labels[SchemaVersionLabel], SchemaVersion)
		}
		v := servedVersion(c, Version)
		if v == nil || v.Schema == nil || v.Schema.OpenAPIV3Schema == nil {
			t.Fatalf("%s: no served %s with a schema", c.Name, Version)
		}
		want := []string{"Age"}
		switch c.Name {
		case CNP, CCNP:
			want = []string{"Age", "Valid", "Reason"}
			if v.Subresources == nil || v.Subresources.Status == nil {
				t.Errorf("%s: no status subresource", c.Name)
			}
		}
		for _, col := range want {
			if !hasColumn(v, col) {
				t.Errorf("%s: no printer column %s (has %v)", c.Name, col, v.AdditionalPrinterColumns)
			}
		}
	}
	for _, n := range []string{CNP, CCNP, CID, CEC, CCEC} {
		if !names[n] {
			t.Errorf("All lacks %s", n)
		}
	}
	// Fresh copies: changing one result does not change the next.
	all[0].Spec.Versions[0].AdditionalPrinterColumns = nil
	again, _ := All()
	if len(again[0].Spec.Versions[0].AdditionalPrinterColumns) == 0 {
		t.Error("All returned shared objects")
	}
}
