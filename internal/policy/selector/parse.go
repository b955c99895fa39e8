package selector

import (
	"fmt"
	"strings"
)

// Parse reads the text form written by Selector.String. Keys may carry a
// source ("k8s:app"); without one they match any source. Grammar, with
// requirements separated by commas outside parentheses:
//
//	key            exists
//	!key           does not exist
//	key=value      in (value); "==" is accepted too
//	key!=value     notin (value)
//	key in (v,...) / key notin (v,...)
func Parse(text string) (Selector, error) {
	text = strings.TrimSpace(text)
	if text == "" {
		return All(), nil
	}
	parts, err := splitTop(text)
	if err != nil {
		return Selector{}, err
	}
	reqs := make([]Requirement, 0, len(parts))
	for i, p := range parts {
		r, err := parseRequirement(strings.TrimSpace(p))
		if err != nil {
			return Selector{}, fmt.Errorf("selector %q: requirement %d: %w", text, i+1, err)
		}
		reqs = append(reqs, r)
	}
	return New(reqs...), nil
}

func splitTop(s string) ([]string, error) {
	var parts []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '(':
			depth++
			if depth > 1 {
				return nil, fmt.Errorf("selector %q: nested parenthesis at offset %d", s, i)
			}
		case ')':
			depth--
			if depth < 0 {
				return nil, fmt.Errorf("selector %q: unbalanced ')' at offset %d", s, i)
			}
		case ',':
			if depth == 0 {
				parts = append(parts, s[start:i])
				start = i + 1
			}
		}
	}
	if depth != 0 {
		return nil, fmt.Errorf("selector %q: missing ')'", s)
	}
	return append(parts, s[start:]), nil
}

func parseRequirement(p string) (Requirement, error) {
	if p == "" {
		return Requirement{}, fmt.Errorf("empty requirement")
	}
	if strings.HasPrefix(p, "!") && !strings.ContainsAny(p, "=()") {
		k, err := parseKey(strings.TrimSpace(p[1:]))
		if err != nil {
			return Requirement{}, err
		}
		k.Op = DoesNotExist
		return k, nil
	}
	for _, op := range []struct {
		word string
		op   Operator
	}{{" notin ", NotIn}, {" in ", In}} {
		if i := strings.Index(p, op.word); i > 0 && strings.HasSuffix(p, ")") {
			k, err := parseKey(strings.TrimSpace(p[:i]))
			if err != nil {
				return Requirement{}, err
			}
			list := strings.TrimSpace(p[i+len(op.word):])
			if !strings.HasPrefix(list, "(") {
				return Requirement{}, fmt.Errorf("%q: expected '(' after %q", p, strings.TrimSpace(op.word))
			}
			vals := strings.Split(list[1:len(list)-1], ",")
			for j, v := range vals {
				vals[j] = strings.TrimSpace(v)
				if err := checkValue(vals[j]); err != nil {
					return Requirement{}, fmt.Errorf("%q: %w", p, err)
				}
			}
			k.Op, k.Values = op.op, vals
			return k, nil
		}
	}
	if i := strings.Index(p, "!="); i > 0 {
		return keyValue(p, p[:i], p[i+2:], NotIn)
	}
	if i := strings.Index(p, "=="); i > 0 {
		return keyValue(p, p[:i], p[i+2:], In)
	}
	if i := strings.Index(p, "="); i > 0 {
		return keyValue(p, p[:i], p[i+1:], In)
	}
	k, err := parseKey(p)
	if err != nil {
		return Requirement{}, err
	}
	k.Op = Exists
	return k, nil
}

func keyValue(p, key, value string, op Operator) (Requirement, error) {
	k, err := parseKey(strings.TrimSpace(key))
	if err != nil {
		return Requirement{}, err
	}
	value = strings.TrimSpace(value)
	if err := checkValue(value); err != nil {
		return Requirement{}, fmt.Errorf("%q: %w", p, err)
	}
	k.Op, k.Values = op, []string{value}
	return k, nil
}

func parseKey(s string) (Requirement, error) {
	if s == "" {
		return Requirement{}, fmt.Errorf("empty key")
	}
	if strings.ContainsAny(s, " \t\n\r=!(),") {
		return Requirement{}, fmt.Errorf("invalid key %q", s)
	}
	src, key := SplitKey(s)
	if key == "" || strings.ContainsRune(key, ':') && src == "" {
		return Requirement{}, fmt.Errorf("invalid key %q", s)
	}
	return Requirement{Source: src, Key: key}, nil
}

func checkValue(v string) error {
	if strings.ContainsAny(v, " \t\n\r=!(),") {
		return fmt.Errorf("invalid value %q", v)
	}
	return nil
}
