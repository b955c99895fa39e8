// Package selector owns label selectors over security labels: the Cilium
// form of a Kubernetes label selector, where a key may name its source
// ("k8s:app", "reserved:host"; no source or "any:" matches every source).
//
// Semantics follow Kubernetes: all requirements must hold; NotIn and
// DoesNotExist hold for a label set that lacks the key; the empty selector
// selects every label set.
package selector

import (
	"fmt"
	"sort"
	"strings"

	"github.com/bulwark-net/bulwark/internal/identity"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Operator of a requirement.
type Operator uint8

const (
	In Operator = iota
	NotIn
	Exists
	DoesNotExist
)

func (o Operator) String() string {
	switch o {
	case In:
		return "In"
	case NotIn:
		return "NotIn"
	case Exists:
		return "Exists"
	}
	return "DoesNotExist"
}

// Requirement is one condition on a label key.
type Requirement struct {
	Source string // identity.SourceAny matches every source
	Key    string
	Op     Operator
	Values []string // sorted, distinct; empty for Exists/DoesNotExist
}

// Selector is a conjunction of requirements. Invariant: requirements are
// sorted and distinct (build with New), so equal selectors have equal
// String().
type Selector struct {
	reqs []Requirement
}

// All is the selector that selects every label set.
func All() Selector { return Selector{} }

// New builds a selector from requirements, normalising them.
func New(reqs ...Requirement) Selector {
	out := make([]Requirement, 0, len(reqs))
	for _, r := range reqs {
		if r.Source == "" {
			r.Source = identity.SourceAny
		}
		if r.Op == Exists || r.Op == DoesNotExist {
			r.Values = nil
		} else {
			r.Values = sortedDistinct(r.Values)
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	dedup := out[:0]
	for i, r := range out {
		if i > 0 && r.String() == out[i-1].String() {
			continue
		}
		dedup = append(dedup, r)
	}
	return Selector{reqs: dedup}
}

func sortedDistinct(vs []string) []string {
	out := append([]string(nil), vs...)
	sort.Strings(out)
	dedup := out[:0]
	for i, v := range out {
		if i > 0 && v == out[i-1] {
			continue
		}
		dedup = append(dedup, v)
	}
	return dedup
}

// SplitKey splits a selector key into source and key: "k8s:app" is
// ("k8s", "app"); "app" is ("any", "app").
func SplitKey(k string) (source, key string) {
	if i := strings.IndexByte(k, ':'); i > 0 {
		return k[:i], k[i+1:]
	}
	return identity.SourceAny, k
}

// FromLabelSelector converts a Kubernetes/Cilium label selector. A nil
// selector converts to All(); callers for whom nil means "absent" check
// before calling.
func FromLabelSelector(ls *metav1.LabelSelector) (Selector, error) {
	if ls == nil {
		return All(), nil
	}
	var reqs []Requirement
	for k, v := range ls.MatchLabels {
		src, key := SplitKey(k)
		if key == "" {
			return Selector{}, fmt.Errorf("matchLabels: empty key in %q", k)
		}
		reqs = append(reqs, Requirement{Source: src, Key: key, Op: In, Values: []string{v}})
	}
	for i, e := range ls.MatchExpressions {
		src, key := SplitKey(e.Key)
		if key == "" {
			return Selector{}, fmt.Errorf("matchExpressions[%d]: empty key", i)
		}
		r := Requirement{Source: src, Key: key, Values: e.Values}
		switch e.Operator {
		case metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn:
			if len(e.Values) == 0 {
				return Selector{}, fmt.Errorf("matchExpressions[%d] (key %q): operator %s needs values", i, e.Key, e.Operator)
			}
			r.Op = In
			if e.Operator == metav1.LabelSelectorOpNotIn {
				r.Op = NotIn
			}
		case metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist:
			if len(e.Values) != 0 {
				return Selector{}, fmt.Errorf("matchExpressions[%d] (key %q): operator %s takes no values", i, e.Key, e.Operator)
			}
			r.Op = Exists
			if e.Operator == metav1.LabelSelectorOpDoesNotExist {
				r.Op = DoesNotExist
			}
		default:
			return Selector{}, fmt.Errorf("matchExpressions[%d] (key %q): unknown operator %q", i, e.Key, e.Operator)
		}
		reqs = append(reqs, r)
	}
	return New(reqs...), nil
}

// And returns the conjunction of s and more requirements.
func (s Selector) And(reqs ...Requirement) Selector {
	return New(append(append([]Requirement(nil), s.reqs...), reqs...)...)
}

// Requirements returns the normalised requirements (do not modify).
func (s Selector) Requirements() []Requirement { return s.reqs }

// IsAll reports whether s selects every label set.
func (s Selector) IsAll() bool { return len(s.reqs) == 0 }

// HasKey reports whether a requirement names key (from any source).
func (s Selector) HasKey(key string) bool {
	for _, r := range s.reqs {
		if r.Key == key {
			return true
		}
	}
	return false
}

// HasSource reports whether a requirement names a key from source.
func (s Selector) HasSource(source string) bool {
	for _, r := range s.reqs {
		if r.Source == source {
			return true
		}
	}
	return false
}

// Matches reports whether the label set satisfies every requirement.
func (s Selector) Matches(ls identity.Labels) bool {
	for i := range s.reqs {
		if !s.reqs[i].matches(ls) {
			return false
		}
	}
	return true
}

func (r *Requirement) matches(ls identity.Labels) bool {
	found, in := false, false
	for _, l := range ls {
		if l.Key != r.Key || (r.Source != identity.SourceAny && l.Source != r.Source) {
			continue
		}
		found = true
		if r.Op == In || r.Op == NotIn {
			for _, v := range r.Values {
				if v == l.Value {
					in = true
					break
				}
			}
		}
	}
	switch r.Op {
	case In:
		return in
	case NotIn:
		return !in
	case Exists:
		return found
	default:
		return !found
	}
}

// String is the canonical text form, parsed back by Parse:
// requirements joined by ",", each "src:key=v", "src:key in (a,b)",
// "src:key notin (a,b)", "src:key" (exists) or "!src:key". All() is "".
func (s Selector) String() string {
	parts := make([]string, len(s.reqs))
	for i, r := range s.reqs {
		parts[i] = r.String()
	}
	return strings.Join(parts, ",")
}

func (r Requirement) String() string {
	k := r.Source + ":" + r.Key
	switch r.Op {
	case In:
		if len(r.Values) == 1 {
			return k + "=" + r.Values[0]
		}
		return k + " in (" + strings.Join(r.Values, ",") + ")"
	case NotIn:
		return k + " notin (" + strings.Join(r.Values, ",") + ")"
	case Exists:
		return k
	}
	return "!" + k
}
