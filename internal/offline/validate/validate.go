// Package validate checks decoded manifests the way the Kubernetes API
// server and Cilium would (errors: the document would be rejected) and lints
// them for policies that parse but do not do what they appear to (warnings).
//
// Every finding names the file, document, object and JSON field path, so a
// user can go straight to the line. Validation never changes its input.
package validate

import (
	"fmt"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/bulwark-net/bulwark/internal/manifest"
)

// Severity of a finding.
type Severity int

const (
	// Info is a note (for example a kind Bulwark ignores); never fails.
	Info Severity = iota
	// Warning: the document is accepted but probably wrong.
	Warning
	// Error: the API server or Cilium would reject the document.
	Error
)

func (s Severity) String() string {
	switch s {
	case Error:
		return "ERROR"
	case Warning:
		return "WARNING"
	}
	return "INFO"
}

// MarshalText writes the severity name (for JSON output).
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a severity name.
func (s *Severity) UnmarshalText(b []byte) error {
	switch string(b) {
	case "ERROR":
		*s = Error
	case "WARNING":
		*s = Warning
	case "INFO":
		*s = Info
	default:
		return fmt.Errorf("unknown severity %q", b)
	}
	return nil
}

// Finding is one problem with one object.
type Finding struct {
	Severity  Severity        `json:"severity"`
	Source    manifest.Source `json:"source"`
	Kind      string          `json:"kind,omitempty"`
	Namespace string          `json:"namespace,omitempty"`
	Name      string          `json:"name,omitempty"`
	Field     string          `json:"field,omitempty"` // JSON path, e.g. spec.ingress[0].toPorts[0].ports[0].port
	Line      int             `json:"line,omitempty"`  // file line of Field (or of the document)
	Message   string          `json:"message"`
	// Rule is a short stable identifier of the check (e.g. "port",
	// "lint/cidr-except-shadowed"), for filtering and tests.
	Rule string `json:"rule"`
}

// String is "SEVERITY: FILE:doc N: Kind ns/name: field.path: message".
func (f Finding) String() string {
	e := manifest.Error{Source: f.Source, Kind: f.Kind, Namespace: f.Namespace, Name: f.Name, Field: f.Field, Reason: f.Message}
	return f.Severity.String() + ": " + e.Error()
}

// Options selects what Run checks.
type Options struct {
	// NoLint turns the lint warnings off (validation only).
	NoLint bool
	// Namespaces, when not nil, are the namespaces that exist besides
	// those the input defines (a running instance's): a namespaced policy
	// in any other namespace is refused, as the API server refuses it
	// ("namespaces "x" not found"). Nil (offline, no instance to ask):
	// namespaces are not checked, as kubectl apply --dry-run=client.
	Namespaces []string
	// NamespacesFrom names where Namespaces came from, for messages
	// (e.g. `instance "default"`).
	NamespacesFrom string
}

// Run validates every object of set, turns decode errors and decoder
// warnings into findings, and (unless opts.NoLint) lints the set as a
// whole. Findings are sorted by file, document, then field.
func Run(set *manifest.Set, decodeErrs manifest.Errors, opts Options) []Finding {
	var out []Finding
	for _, e := range decodeErrs {
		out = append(out, fromError(Error, "decode", e))
	}
	if set != nil {
		for _, o := range set.Objects {
			for _, w := range o.Warnings {
				out = append(out, fromError(Warning, "decode", w))
			}
			out = append(out, Object(o)...)
		}
		out = append(out, duplicates(set)...)
		if opts.Namespaces != nil {
			out = append(out, missingNamespaces(set, opts.Namespaces, opts.NamespacesFrom)...)
		}
		if !opts.NoLint {
			out = append(out, Lint(set)...)
		}
	}
	Sort(out)
	return out
}

// Sort orders findings by file, document, field, then message.
func Sort(fs []Finding) {
	sort.SliceStable(fs, func(i, j int) bool {
		a, b := fs[i], fs[j]
		if a.Source.File != b.Source.File {
			return a.Source.File < b.Source.File
		}
		if a.Source.DocIndex != b.Source.DocIndex {
			return a.Source.DocIndex < b.Source.DocIndex
		}
		if a.Field != b.Field {
			return a.Field < b.Field
		}
		return a.Message < b.Message
	})
}

// Count returns the number of findings of each severity.
func Count(fs []Finding) (errors, warnings, infos int) {
	for _, f := range fs {
		switch f.Severity {
		case Error:
			errors++
		case Warning:
			warnings++
		default:
			infos++
		}
	}
	return
}

func fromError(sev Severity, rule string, e *manifest.Error) Finding {
	return Finding{Severity: sev, Source: e.Source, Kind: e.Kind, Namespace: e.Namespace, Name: e.Name, Field: e.Field, Line: e.Line, Message: e.Reason, Rule: rule}
}

// reporter collects the findings of one object.
type reporter struct {
	obj *manifest.Object
	out []Finding
}

func (r *reporter) add(sev Severity, rule string, path *field.Path, format string, args ...any) {
	fieldPath := ""
	if path != nil {
		fieldPath = path.String()
	}
	r.addAt(sev, rule, fieldPath, format, args...)
}

// addAt adds a finding at a field given as a JSON path string ("" for the
// whole object).
func (r *reporter) addAt(sev Severity, rule, fieldPath, format string, args ...any) {
	r.out = append(r.out, Finding{
		Severity: sev, Source: r.obj.Source, Kind: r.obj.Kind,
		Namespace: r.obj.Namespace, Name: r.obj.Name, Field: fieldPath,
		Line: r.obj.FieldLine(fieldPath), Message: fmt.Sprintf(format, args...), Rule: rule,
	})
}

func (r *reporter) errorf(rule string, path *field.Path, format string, args ...any) {
	r.add(Error, rule, path, format, args...)
}

func (r *reporter) warnf(rule string, path *field.Path, format string, args ...any) {
	r.add(Warning, rule, path, format, args...)
}

// fieldErrors adds k8s field.ErrorList entries as errors.
func (r *reporter) fieldErrors(rule string, errs field.ErrorList) {
	for _, e := range errs {
		msg := e.ErrorBody()
		r.out = append(r.out, Finding{
			Severity: Error, Source: r.obj.Source, Kind: r.obj.Kind,
			Namespace: r.obj.Namespace, Name: r.obj.Name, Field: e.Field,
			Line: r.obj.FieldLine(e.Field), Message: msg, Rule: rule,
		})
	}
}

// missingNamespaces refuses namespaced policies whose namespace is neither
// defined in the input nor among known.
func missingNamespaces(set *manifest.Set, known []string, from string) []Finding {
	exists := map[string]bool{}
	for _, ns := range known {
		exists[ns] = true
	}
	for _, o := range set.Objects {
		if o.Kind == "Namespace" {
			exists[o.Name] = true
		}
	}
	var out []Finding
	for _, o := range set.Objects {
		if o.Kind != "NetworkPolicy" && o.Kind != "CiliumNetworkPolicy" {
			continue
		}
		if o.Namespace == "" || exists[o.Namespace] {
			continue
		}
		out = append(out, Finding{
			Severity: Error, Source: o.Source, Kind: o.Kind, Namespace: o.Namespace, Name: o.Name,
			Field: "metadata.namespace", Line: o.FieldLine("metadata.namespace"), Rule: "namespace",
			Message: fmt.Sprintf("namespaces %q not found: neither in the input nor in %s (kubectl apply would fail the same way; add the Namespace)", o.Namespace, from),
		})
	}
	return out
}

// duplicates reports objects defined twice (same kind, namespace, name).
func duplicates(set *manifest.Set) []Finding {
	type key struct{ kind, ns, name string }
	first := map[key]*manifest.Object{}
	var out []Finding
	for _, o := range set.Objects {
		if o.Kind == "" || o.Name == "" {
			continue
		}
		k := key{o.Kind, o.Namespace, o.Name}
		if prev, dup := first[k]; dup {
			out = append(out, Finding{
				Severity: Error, Source: o.Source, Kind: o.Kind, Namespace: o.Namespace, Name: o.Name,
				Field: "metadata.name", Line: o.FieldLine("metadata.name"), Rule: "duplicate",
				Message: fmt.Sprintf("duplicate object: also defined at %s", prev.Source),
			})
			continue
		}
		first[k] = o
	}
	return out
}

func quoteList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}
