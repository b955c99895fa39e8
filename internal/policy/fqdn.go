package policy

import (
	"net/netip"
	"regexp"
	"sort"
	"strings"

	"github.com/bulwark-net/bulwark/internal/identity"
)

// fqdnMatcher matches DNS names against toFQDNs selectors. Names are
// compared lower case without the trailing dot. In a pattern "*" stands for
// any run of DNS name characters within one label (as in Cilium), and a
// pattern that is only "*" matches every name.
type fqdnMatcher struct {
	names    []string
	patterns []string
	res      []*regexp.Regexp
}

func newFQDNMatcher(names, patterns []string) *fqdnMatcher {
	m := &fqdnMatcher{}
	for _, n := range names {
		m.names = append(m.names, normalizeName(n))
	}
	for _, p := range patterns {
		m.patterns = append(m.patterns, normalizeName(p))
	}
	sort.Strings(m.names)
	sort.Strings(m.patterns)
	for _, p := range m.patterns {
		m.res = append(m.res, patternRegexp(p))
	}
	return m
}

func normalizeName(n string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(n)), ".")
}

func patternRegexp(p string) *regexp.Regexp {
	if p == "*" {
		return regexp.MustCompile(`^.*$`)
	}
	var b strings.Builder
	b.WriteString("^")
	for i, part := range strings.Split(p, "*") {
		if i > 0 {
			b.WriteString(`[-a-z0-9_]*`)
		}
		b.WriteString(regexp.QuoteMeta(part))
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// Matches reports whether a DNS name is selected.
func (m *fqdnMatcher) Matches(name string) bool {
	name = normalizeName(name)
	for _, n := range m.names {
		if n == name {
			return true
		}
	}
	for _, re := range m.res {
		if re.MatchString(name) {
			return true
		}
	}
	return false
}

func (m *fqdnMatcher) String() string {
	parts := make([]string, 0, len(m.names)+len(m.patterns))
	for _, n := range m.names {
		parts = append(parts, "matchName="+n)
	}
	for _, p := range m.patterns {
		parts = append(parts, "matchPattern="+p)
	}
	return strings.Join(parts, ",")
}

// fqdnState holds what the DNS proxy learned: name → IPs, and the local
// identity of each learned IP's /32 (/128) prefix.
type fqdnState struct {
	ips    map[string]map[netip.Addr]struct{} // normalised name → addresses
	idOfIP map[netip.Addr]identity.NumericIdentity
}

func newFQDNState() *fqdnState {
	return &fqdnState{ips: map[string]map[netip.Addr]struct{}{}, idOfIP: map[netip.Addr]identity.NumericIdentity{}}
}

func (f *fqdnState) identitiesMatching(m *fqdnMatcher) map[identity.NumericIdentity]struct{} {
	out := map[identity.NumericIdentity]struct{}{}
	for name, addrs := range f.ips {
		if !m.Matches(name) {
			continue
		}
		for a := range addrs {
			if id, ok := f.idOfIP[a]; ok {
				out[id] = struct{}{}
			}
		}
	}
	return out
}
