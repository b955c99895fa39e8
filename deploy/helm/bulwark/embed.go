// Package helmchart holds Bulwark's Helm chart (this directory) as files
// for Go programs: internal/k8s/deploy loads it from here, so rendering
// needs no checkout of the repository. Helm itself ignores this file
// (.helmignore).
package helmchart

import "embed"

// Files are the chart's files, paths relative to the chart directory.
//
//go:embed Chart.yaml values.yaml values.schema.json .helmignore all:templates crds
var Files embed.FS
