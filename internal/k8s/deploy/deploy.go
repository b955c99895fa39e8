// Package deploy renders Bulwark's Helm chart (deploy/helm/bulwark, embedded
// by its package helmchart) with Helm's own library, exactly as
// 'helm template --include-crds' does, and splits the result into objects.
// 'go generate' here writes the plain manifests deploy/manifests/bulwark.yaml.
//
// Helm is a heavy dependency: only this package, its tests and its
// generator import it; cmd/bulwark does not.
package deploy

//go:generate go run ./gen -o ../../../deploy/manifests/bulwark.yaml

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"strings"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/loader/archive"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	release "helm.sh/helm/v4/pkg/release/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	helmchart "github.com/bulwark-net/bulwark/deploy/helm/bulwark"
)

// Defaults of the plain manifests.
const (
	DefaultReleaseName = "bulwark"
	DefaultNamespace   = "kube-system"
	// KubeVersion is the Kubernetes version the chart is rendered for
	// (.Capabilities.KubeVersion): the one Bulwark is built and tested
	// against.
	KubeVersion = "v1.37.2"
)

// LoadChart loads the embedded chart, ignoring what its .helmignore
// ignores (the embedding Go file).
func LoadChart() (*chart.Chart, error) {
	var files []*archive.BufferedFile
	err := fs.WalkDir(helmchart.Files, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(helmchart.Files, path)
		if err != nil {
			return err
		}
		files = append(files, &archive.BufferedFile{Name: path, Data: data})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the embedded chart: %w", err)
	}
	ch, err := loader.LoadFiles(files)
	if err != nil {
		return nil, fmt.Errorf("load the chart: %w", err)
	}
	if err := ch.Validate(); err != nil {
		return nil, fmt.Errorf("chart %s: %w", ch.Name(), err)
	}
	return ch, nil
}

// Options choose the release and its values.
type Options struct {
	// ReleaseName defaults to DefaultReleaseName; Namespace to
	// DefaultNamespace.
	ReleaseName string
	Namespace   string
	// Values override the chart's values.yaml (as 'helm --values'); they
	// are checked against values.schema.json.
	Values map[string]any
}

// Rendered is a rendered release.
type Rendered struct {
	// Manifest is every object as YAML documents, CRDs first, then in
	// Helm's install order, each headed by '# Source: <template>'.
	Manifest string
	// Notes is the rendered NOTES.txt.
	Notes string
}

// Render renders ch as 'helm template --include-crds' would, without
// contacting any cluster. A value the schema refuses or a template that
// fails is an error naming it.
func Render(ch *chart.Chart, o Options) (*Rendered, error) {
	if o.ReleaseName == "" {
		o.ReleaseName = DefaultReleaseName
	}
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	kv, err := common.ParseKubeVersion(KubeVersion)
	if err != nil {
		return nil, err
	}
	// Helm logs its client-only warnings; they are not ours to print.
	cfg := action.NewConfiguration(action.ConfigurationSetLogger(slog.NewTextHandler(io.Discard, nil)))
	inst := action.NewInstall(cfg)
	inst.DryRunStrategy = action.DryRunClient
	inst.ReleaseName = o.ReleaseName
	inst.Namespace = o.Namespace
	inst.Replace = true // no release storage to check the name against
	inst.IncludeCRDs = true
	inst.KubeVersion = kv
	vals := o.Values
	if vals == nil {
		vals = map[string]any{}
	}
	r, err := inst.Run(ch, vals)
	if err != nil {
		return nil, fmt.Errorf("render chart %s (release %s in %s): %w", ch.Name(), o.ReleaseName, o.Namespace, err)
	}
	rel, ok := r.(*release.Release)
	if !ok {
		return nil, fmt.Errorf("render chart %s: unexpected release type %T", ch.Name(), r)
	}
	if len(rel.Hooks) > 0 {
		// The chart has none: a hook would be left out of the plain
		// manifests silently.
		return nil, fmt.Errorf("render chart %s: hooks are not supported (%s)", ch.Name(), rel.Hooks[0].Path)
	}
	return &Rendered{Manifest: strings.TrimSpace(rel.Manifest) + "\n", Notes: rel.Info.Notes}, nil
}

// Objects decodes a multi-document manifest into objects, in order,
// skipping empty documents. A document without apiVersion, kind or name is
// an error naming its position.
func Objects(manifest []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifest), 4096)
	var out []*unstructured.Unstructured
	for i := 1; ; i++ {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		if u.GetAPIVersion() == "" || u.GetKind() == "" || u.GetName() == "" {
			return nil, fmt.Errorf("document %d: apiVersion, kind and metadata.name are required (got %q %q %q)",
				i, u.GetAPIVersion(), u.GetKind(), u.GetName())
		}
		out = append(out, u)
	}
}

// Header heads the generated plain manifests.
const Header = `# Bulwark plain manifests: deploy/helm/bulwark rendered with its default
# values (release ` + DefaultReleaseName + `, namespace ` + DefaultNamespace + `).
# Generated by 'go generate ./internal/k8s/deploy'; DO NOT EDIT.
# Install: kubectl apply --server-side -f deploy/manifests/bulwark.yaml
`

// PlainManifests renders the embedded chart with its defaults: the content
// of deploy/manifests/bulwark.yaml.
func PlainManifests() ([]byte, error) {
	ch, err := LoadChart()
	if err != nil {
		return nil, err
	}
	r, err := Render(ch, Options{})
	if err != nil {
		return nil, err
	}
	return []byte(Header + r.Manifest), nil
}
