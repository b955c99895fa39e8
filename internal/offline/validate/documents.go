package validate

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/manifest"
)

// Documents decodes a batch of documents (as `bulwark apply` sends them)
// and, with check, validates it as the API server and Cilium would; any
// problem in any document fails the whole batch (the error lists every
// problem). Both the CLI (before contacting the agent) and the agent
// (which trusts no client) run it. Deletion only needs each document's
// kind, namespace and name, so a metadata-only document is enough there.
func Documents(docs []agentapi.Document, check bool) ([]*manifest.Object, error) {
	var objs []*manifest.Object
	var errs manifest.Errors
	for _, d := range docs {
		o, e := manifest.Decode(d.Source, d.Data)
		objs = append(objs, o...)
		errs = append(errs, e...)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	if err := checkDocumentsSize(docs); err != nil {
		return nil, err
	}
	type key struct{ kind, ns, name string }
	seen := map[key]*manifest.Object{}
	for _, o := range objs {
		if _, ok := o.Obj.(*manifest.Unsupported); ok {
			continue
		}
		k := key{o.Kind, o.Namespace, o.Name}
		if prev, ok := seen[k]; ok {
			errs = append(errs, &manifest.Error{Source: o.Source, Kind: o.Kind, Namespace: o.Namespace, Name: o.Name,
				Reason: fmt.Sprintf("defined twice (first at %s)", prev.Source)})
		}
		seen[k] = o
	}
	if len(errs) > 0 {
		return nil, errs
	}
	if !check {
		return objs, nil
	}
	// Any error-severity finding rejects the batch, listing every one.
	var msgs []string
	for _, f := range Run(manifest.NewSet(objs...), nil, Options{NoLint: true}) {
		if f.Severity == Error {
			msgs = append(msgs, f.String())
		}
	}
	if len(msgs) > 0 {
		return nil, errors.New(strings.Join(msgs, "\n"))
	}
	return objs, nil
}

// checkDocumentsSize refuses a batch larger than one request may carry,
// naming its largest inputs.
func checkDocumentsSize(docs []agentapi.Document) error {
	total := 0
	for _, d := range docs {
		total += len(d.Data)
	}
	if total <= agentapi.MaxDocumentsBytes {
		return nil
	}
	sorted := slices.Clone(docs)
	slices.SortFunc(sorted, func(a, b agentapi.Document) int { return len(b.Data) - len(a.Data) })
	var big []string
	for _, d := range sorted[:min(3, len(sorted))] {
		big = append(big, fmt.Sprintf("%s (%d bytes)", d.Source, len(d.Data)))
	}
	return fmt.Errorf("the input totals %d bytes; one apply or delete carries at most %d bytes (12 MiB): split it into several (largest: %s)",
		total, agentapi.MaxDocumentsBytes, strings.Join(big, ", "))
}
