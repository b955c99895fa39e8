// Command gen writes Bulwark's CRDs (package crds), one YAML file each, to
// a directory: `go generate ./internal/k8s/crds` runs it for the Helm chart.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/bulwark-net/bulwark/internal/k8s/crds"
)

func main() {
	out := flag.String("out", "", "directory to write the CRD manifests to")
	flag.Parse()
	if err := run(*out); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func run(dir string) error {
	if dir == "" {
		return fmt.Errorf("-out is required")
	}
	all, err := crds.All()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, c := range all {
		b, err := crds.Manifest(c)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, crds.FileName(c)), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}
