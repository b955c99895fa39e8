// Package manifests holds Bulwark's plain manifests (bulwark.yaml, the
// chart rendered with its default values) for Go programs: 'bulwark
// cluster up' applies them, adapted to its nodes, without Helm.
package manifests

import _ "embed"

// Bulwark is deploy/manifests/bulwark.yaml: CRDs, RBAC, ConfigMap and the
// agent's DaemonSet.
//
//go:embed bulwark.yaml
var Bulwark []byte
