// Command gen writes Bulwark's plain manifests: the Helm chart rendered
// with its default values ('go generate ./internal/k8s/deploy').
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"

	"github.com/bulwark-net/bulwark/internal/k8s/deploy"
)

func main() {
	out := flag.String("o", "", "output file")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "gen: -o is required")
		os.Exit(2)
	}
	b, err := deploy.PlainManifests()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	if old, err := os.ReadFile(*out); err == nil && bytes.Equal(old, b) {
		return
	}
	if err := os.WriteFile(*out, b, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}
