// Package matchpattern matches DNS names against the matchName and
// matchPattern fields of toFQDNs selectors and rules.dns entries, with
// Cilium's semantics (pkg/fqdn/matchpattern):
//
//   - names compare lower case, as fully qualified names (trailing dot);
//   - in a pattern, "*" matches any run of DNS name characters
//     ([-a-z0-9_]) within one label, never a dot;
//   - a leading "**." matches one or more whole labels (any depth);
//   - the pattern "*" alone matches every name;
//   - matching is anchored: the pattern covers the whole name.
package matchpattern

import (
	"fmt"
	"regexp"
	"strings"
)

const (
	labelChars = `[-a-z0-9_]`
	// anyDepth is what a leading "**." stands for: one or more labels,
	// each followed by its dot.
	anyDepth = `(?:` + labelChars + `+[.])+`
)

// Normalize returns a name in the form rules compare: trimmed, lower case,
// fully qualified (one trailing dot). The empty name stays empty.
func Normalize(name string) string {
	name = strings.ToLower(strings.TrimSpace(name))
	if name == "" || strings.HasSuffix(name, ".") {
		return name
	}
	return name + "."
}

// Validate reports whether a pattern only uses characters Cilium accepts
// in a matchPattern.
func Validate(pattern string) error {
	p := strings.ToLower(strings.TrimSpace(pattern))
	if p == "" {
		return fmt.Errorf("empty pattern")
	}
	for _, c := range p {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '*') {
			return fmt.Errorf("pattern %q: only alphanumeric characters, '-', '_', '.' and '*' are allowed", pattern)
		}
	}
	if strings.Contains(strings.TrimPrefix(p, "**."), "**") {
		return fmt.Errorf("pattern %q: '**' is only allowed as a leading '**.'", pattern)
	}
	return nil
}

// ToRegexp is the anchored regular expression of a pattern (see the
// package comment). The pattern must Validate.
func ToRegexp(pattern string) string {
	p := strings.ToLower(strings.TrimSpace(pattern))
	if p == "*" {
		return `^(?:` + labelChars + `+[.])+$|^[.]$`
	}
	p = Normalize(p)
	var b strings.Builder
	b.WriteString("^")
	if rest, ok := strings.CutPrefix(p, "**."); ok {
		b.WriteString(anyDepth)
		p = rest
	}
	for i, part := range strings.Split(p, "*") {
		if i > 0 {
			b.WriteString(labelChars + `*`)
		}
		b.WriteString(regexp.QuoteMeta(part))
	}
	b.WriteString("$")
	return b.String()
}

// Matcher matches names against a set of matchNames and matchPatterns
// (OR-ed). Immutable once built; safe for concurrent use.
type Matcher struct {
	names map[string]struct{}
	res   []*regexp.Regexp
}

// Compile builds a Matcher. An invalid pattern is an error, never a
// matcher that silently matches less or more.
func Compile(names, patterns []string) (*Matcher, error) {
	m := &Matcher{names: make(map[string]struct{}, len(names))}
	for _, n := range names {
		if n = Normalize(n); n != "" {
			m.names[n] = struct{}{}
		}
	}
	for _, p := range patterns {
		if err := Validate(p); err != nil {
			return nil, err
		}
		re, err := regexp.Compile(ToRegexp(p))
		if err != nil {
			return nil, fmt.Errorf("pattern %q: %w", p, err)
		}
		m.res = append(m.res, re)
	}
	return m, nil
}

// Match reports whether a name (in any case, with or without the trailing
// dot) is selected.
func (m *Matcher) Match(name string) bool {
	name = Normalize(name)
	if name == "" {
		return false
	}
	if _, ok := m.names[name]; ok {
		return true
	}
	for _, re := range m.res {
		if re.MatchString(name) {
			return true
		}
	}
	return false
}

// Empty reports whether the matcher matches nothing.
func (m *Matcher) Empty() bool { return len(m.names) == 0 && len(m.res) == 0 }
