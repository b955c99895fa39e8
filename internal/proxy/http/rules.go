package httpproxy

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"

	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// request is what the rules see of one request: the values the backend
// will receive.
type request struct {
	method string
	target string // normalised path, plus "?query" when there is one
	host   string // the authority (Host / :authority)
	header http.Header
}

// headerCond is one header condition: present, or exactly value.
type headerCond struct {
	name    string // canonical
	value   string
	present bool // only presence is required
}

func (c headerCond) holds(h http.Header) bool {
	vs, ok := h[c.name]
	if !ok || len(vs) == 0 {
		return false
	}
	if c.present {
		return true
	}
	// Envoy matches a repeated header against its values joined by ",".
	if len(vs) == 1 {
		return vs[0] == c.value
	}
	return strings.Join(vs, ",") == c.value
}

// headerAction is a headerMatches entry with a mismatch action other than
// FAIL: it never decides, it acts on an allowed request.
type headerAction struct {
	headerCond
	action resolved.MismatchAction
}

// rule is one compiled resolved.HTTPRule: every set field must hold.
type rule struct {
	method, path, host *regexp.Regexp
	conds              []headerCond
	actions            []headerAction
}

// anchored compiles a Cilium rule expression matched against the whole
// value, as Envoy's safe_regex is.
func anchored(expr string) (*regexp.Regexp, error) {
	if expr == "" {
		return nil, nil
	}
	return regexp.Compile(`^(?:` + expr + `)$`)
}

func compileRule(h resolved.HTTPRule) (rule, error) {
	var r rule
	var err error
	if r.method, err = anchored(h.Method); err != nil {
		return r, fmt.Errorf("method %q: %w", h.Method, err)
	}
	if r.path, err = anchored(h.Path); err != nil {
		return r, fmt.Errorf("path %q: %w", h.Path, err)
	}
	if r.host, err = anchored(h.Host); err != nil {
		return r, fmt.Errorf("host %q: %w", h.Host, err)
	}
	for _, hdr := range h.Headers {
		// Cilium: split at the first space; "Name:" loses its colons; the
		// value is literal.
		name, value, hasValue := strings.Cut(hdr, " ")
		if hasValue {
			name = strings.TrimRight(name, ":")
		}
		r.conds = append(r.conds, headerCond{name: http.CanonicalHeaderKey(name), value: value, present: !hasValue})
	}
	for _, m := range h.HeaderMatches {
		// As Cilium: FAIL without a value requires presence; an action
		// without a value compares against the empty value.
		c := headerCond{name: http.CanonicalHeaderKey(m.Name), value: m.Value}
		if m.Mismatch == resolved.MismatchFail {
			c.present = m.Value == ""
			r.conds = append(r.conds, c)
			continue
		}
		r.actions = append(r.actions, headerAction{headerCond: c, action: m.Mismatch})
	}
	return r, nil
}

func (r *rule) matches(q *request) bool {
	if r.method != nil && !r.method.MatchString(q.method) {
		return false
	}
	if r.path != nil && !r.path.MatchString(q.target) {
		return false
	}
	if r.host != nil && !r.host.MatchString(q.host) {
		return false
	}
	for _, c := range r.conds {
		if !c.holds(q.header) {
			return false
		}
	}
	return true
}

// ruleSet is the compiled form of one resolved.L7Rules: rules OR-ed.
type ruleSet struct {
	rules []rule
	// sideEffects: some rule has header actions, so every rule is
	// evaluated instead of stopping at the first match.
	sideEffects bool
	err         error // a rule that does not compile: the set denies everything
}

// ruleCache compiles each resolved.L7Rules once. Resolved rule sets are
// immutable and shared, so their address identifies them; the cache is
// dropped whole when it grows past its bound (policy churn).
type ruleCache struct {
	mu  sync.RWMutex
	m   map[*resolved.L7Rules]*ruleSet
	max int
}

func newRuleCache() *ruleCache {
	return &ruleCache{m: make(map[*resolved.L7Rules]*ruleSet), max: 4096}
}

func (c *ruleCache) get(l7 *resolved.L7Rules) *ruleSet {
	c.mu.RLock()
	rs, ok := c.m[l7]
	c.mu.RUnlock()
	if ok {
		return rs
	}
	rs = &ruleSet{}
	if l7 != nil {
		for i, h := range l7.HTTP {
			r, err := compileRule(h)
			if err != nil {
				rs = &ruleSet{err: fmt.Errorf("http[%d]: %w", i, err)}
				break
			}
			rs.rules = append(rs.rules, r)
			rs.sideEffects = rs.sideEffects || len(r.actions) > 0
		}
	}
	c.mu.Lock()
	if len(c.m) >= c.max {
		clear(c.m)
	}
	c.m[l7] = rs
	c.mu.Unlock()
	return rs
}

// evaluate reports whether any rule allows q. The header actions of every
// matching rule are returned, in rule order, to apply if the request is
// forwarded (Cilium evaluates all rules when some have side effects).
func (rs *ruleSet) evaluate(q *request) (allowed bool, actions []headerAction) {
	if rs.err != nil {
		return false, nil
	}
	for i := range rs.rules {
		r := &rs.rules[i]
		if !r.matches(q) {
			continue
		}
		if !rs.sideEffects {
			return true, nil
		}
		allowed = true
		actions = append(actions, r.actions...)
	}
	return allowed, actions
}

// apply performs the mismatch actions on the outgoing header and returns
// the mismatches (for the record), as cilium-envoy does: LOG only records;
// ADD appends Name: Value; DELETE removes the header; REPLACE sets it.
func applyActions(actions []headerAction, h http.Header) (mismatched []string) {
	for _, a := range actions {
		if a.holds(h) {
			continue
		}
		mismatched = append(mismatched, a.name+" ("+string(a.action)+")")
		switch a.action {
		case resolved.MismatchAdd:
			h.Add(a.name, a.value)
		case resolved.MismatchDelete:
			h.Del(a.name)
		case resolved.MismatchReplace:
			h.Set(a.name, a.value)
		}
	}
	return mismatched
}
