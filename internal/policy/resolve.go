package policy

import (
	"sort"
	"strconv"

	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// recompute resolves an endpoint's policy; it reports whether the policy
// (or identity) changed. An unchanged policy keeps its pointer and
// revision.
func (r *Repository) recompute(ep *Endpoint) bool {
	rules := r.rulesFor(ep.Identity)
	key := memoKey(ep)
	pol := r.memo[key]
	if pol == nil {
		pol = &resolved.EndpointPolicy{Identity: ep.Identity, Revision: r.revision}
		for _, d := range []resolved.Direction{resolved.Ingress, resolved.Egress} {
			r.resolveDirection(pol.Dir(d), d, ep, rules)
		}
		if r.memo != nil {
			r.memo[key] = pol
		}
	}
	if ep.Policy != nil && samePolicy(ep.Policy, pol) {
		if !sameRules(ep.rules, rules) {
			n := *ep
			n.rules = rules
			r.endpoints[ep.Key] = &n
		}
		return false
	}
	n := *ep
	n.Policy, n.rules = pol, rules
	r.endpoints[ep.Key] = &n
	return true
}

// memoKey identifies what an endpoint's resolution depends on besides
// the repository-wide state: its identity and its container ports.
func memoKey(ep *Endpoint) string {
	b := make([]byte, 0, 16+len(ep.Ports)*16)
	b = strconv.AppendUint(b, uint64(ep.Identity), 10)
	for _, p := range ep.Ports {
		b = append(b, '|')
		b = append(b, p.Name...)
		b = append(b, '/')
		b = strconv.AppendUint(b, uint64(p.Proto), 10)
		b = append(b, '/')
		b = strconv.AppendUint(b, uint64(p.Port), 10)
	}
	return string(b)
}

func sameRules(a, b []*compiledRule) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

type entryKey struct {
	peer    resolved.SelectorID
	proto   resolved.Protocol
	lo, hi  uint16
	verdict resolved.Verdict
}

// resolveDirection fills one direction's table. Entries are a sum: one per
// (peer selector, protocol, port range, verdict); equal entries from
// several rules are merged and keep every origin.
func (r *Repository) resolveDirection(dp *resolved.DirectionPolicy, d resolved.Direction, ep *Endpoint, rules []*compiledRule) {
	idx := map[entryKey]int{}
	add := func(e resolved.Entry, origin resolved.PolicyRef) {
		k := entryKey{e.Peer, e.Proto, e.PortLo, e.PortHi, e.Verdict}
		if i, ok := idx[k]; ok {
			ex := &dp.Entries[i]
			if !hasRef(ex.Origin, origin) {
				ex.Origin = append(ex.Origin, origin)
			}
			if e.L7 != nil {
				ex.L7 = mergeL7(ex.L7, e.L7)
			}
			return
		}
		e.Origin = []resolved.PolicyRef{origin}
		idx[k] = len(dp.Entries)
		dp.Entries = append(dp.Entries, e)
	}
	// Default deny: enforced when an enforcing policy selects the
	// endpoint in this direction, else audit when an audit-mode one does.
	var auditSelecting []resolved.PolicyRef
	for _, rule := range rules {
		sec := &rule.dirs[d]
		if !sec.present {
			continue
		}
		if sec.defaultDeny && rule.audit {
			if !hasRef(auditSelecting, rule.policy) {
				auditSelecting = append(auditSelecting, rule.policy)
			}
		} else if sec.defaultDeny {
			dp.Enforced = true
			if !hasRef(dp.Selecting, rule.policy) {
				dp.Selecting = append(dp.Selecting, rule.policy)
			}
		}
		ip := r.policies[policyKey(rule.policy)]
		for i := range sec.items {
			it := &sec.items[i]
			verdict := auditVerdict(it.verdict, rule.audit)
			for _, peer := range ip.itemPeers(it) {
				sel := ip.selIDs[peer.key]
				if it.l3Only {
					add(resolved.Entry{Peer: sel, Proto: resolved.ProtoAny, Verdict: verdict}, rule.policy)
					continue
				}
				for _, ps := range it.ports {
					if ps.name != "" && d == resolved.Egress {
						// Named on the destination: derived selectors
						// (namedport.go), one per value pods give it.
						if peer.fqdn != nil {
							continue
						}
						for _, v := range r.namedValues(ps) {
							id, ok := ip.namedSelIDs[namedPeer(peer, v).key]
							if !ok {
								continue
							}
							e := resolved.Entry{Peer: id, Proto: v.proto, PortLo: v.port, PortHi: v.port, Verdict: verdict}
							if ps.l7 != nil {
								e.Verdict = resolved.Redirect
								e.L7 = ps.l7
							}
							add(e, rule.policy)
						}
						continue
					}
					r.expandPort(ps, d, ep, func(proto resolved.Protocol, lo, hi uint16) {
						e := resolved.Entry{Peer: sel, Proto: proto, PortLo: lo, PortHi: hi, Verdict: verdict}
						if ps.l7 != nil {
							e.Verdict = resolved.Redirect
							e.L7 = ps.l7
						}
						add(e, rule.policy)
					})
				}
			}
		}
	}
	if !dp.Enforced && len(auditSelecting) > 0 {
		dp.Audit = true
		dp.Selecting = auditSelecting
	}
	sort.Slice(dp.Entries, func(i, j int) bool {
		a, b := &dp.Entries[i], &dp.Entries[j]
		switch {
		case a.Peer != b.Peer:
			return a.Peer < b.Peer
		case a.Proto != b.Proto:
			return a.Proto < b.Proto
		case a.PortLo != b.PortLo:
			return a.PortLo < b.PortLo
		case a.PortHi != b.PortHi:
			return a.PortHi < b.PortHi
		}
		return a.Verdict < b.Verdict
	})
	sort.Slice(dp.Selecting, func(i, j int) bool { return dp.Selecting[i].String() < dp.Selecting[j].String() })
}

// expandPort emits the concrete (protocol, range) of a port spec. A named
// port resolves against the endpoint's own container ports: expandPort
// serves ingress, where the endpoint is the destination (egress named
// ports resolve per destination through derived selectors, see
// namedport.go).
func (r *Repository) expandPort(ps portSpec, d resolved.Direction, ep *Endpoint, emit func(resolved.Protocol, uint16, uint16)) {
	if ps.name == "" {
		emit(ps.proto, ps.lo, ps.hi)
		return
	}
	for _, p := range ep.Ports {
		if p.Name == ps.name && (ps.anyProto || ps.proto == p.Proto) {
			emit(p.Proto, p.Port, p.Port)
		}
	}
}

func hasRef(refs []resolved.PolicyRef, r resolved.PolicyRef) bool {
	for _, x := range refs {
		if x == r {
			return true
		}
	}
	return false
}

// mergeL7 returns the union of two rule sets (a new value: compiled rules
// are shared and must not be modified).
func mergeL7(a, b *resolved.L7Rules) *resolved.L7Rules {
	if a == nil {
		return b
	}
	if a == b {
		return a
	}
	out := &resolved.L7Rules{}
	seenH := map[string]bool{}
	for _, set := range []*resolved.L7Rules{a, b} {
		for _, h := range set.HTTP {
			k := httpRuleKey(h)
			if !seenH[k] {
				seenH[k] = true
				out.HTTP = append(out.HTTP, h)
			}
		}
	}
	seenD := map[resolved.DNSRule]bool{}
	for _, set := range []*resolved.L7Rules{a, b} {
		for _, d := range set.DNS {
			if !seenD[d] {
				seenD[d] = true
				out.DNS = append(out.DNS, d)
			}
		}
	}
	return out
}

// httpRuleKey identifies an HTTP rule by every field, for deduplication
// and comparison.
func httpRuleKey(h resolved.HTTPRule) string {
	k := h.Method + "\x00" + h.Path + "\x00" + h.Host + "\x00" + joinNul(h.Headers)
	for _, m := range h.HeaderMatches {
		k += "\x01" + m.Name + "\x00" + m.Value + "\x00" + string(m.Mismatch)
	}
	return k
}

func joinNul(ss []string) string {
	n := ""
	for _, s := range ss {
		n += s + "\x00"
	}
	return n
}

// samePolicy compares two policies ignoring Revision.
func samePolicy(a, b *resolved.EndpointPolicy) bool {
	if a.Identity != b.Identity {
		return false
	}
	for _, d := range []resolved.Direction{resolved.Ingress, resolved.Egress} {
		x, y := a.Dir(d), b.Dir(d)
		if x.Enforced != y.Enforced || x.Audit != y.Audit || len(x.Entries) != len(y.Entries) || len(x.Selecting) != len(y.Selecting) {
			return false
		}
		for i := range x.Selecting {
			if x.Selecting[i] != y.Selecting[i] {
				return false
			}
		}
		for i := range x.Entries {
			if !sameEntry(&x.Entries[i], &y.Entries[i]) {
				return false
			}
		}
	}
	return true
}

func sameEntry(a, b *resolved.Entry) bool {
	if a.Peer != b.Peer || a.Proto != b.Proto || a.PortLo != b.PortLo || a.PortHi != b.PortHi || a.Verdict != b.Verdict {
		return false
	}
	if len(a.Origin) != len(b.Origin) {
		return false
	}
	for i := range a.Origin {
		if a.Origin[i] != b.Origin[i] {
			return false
		}
	}
	if (a.L7 == nil) != (b.L7 == nil) {
		return false
	}
	if a.L7 != nil && a.L7 != b.L7 {
		if len(a.L7.HTTP) != len(b.L7.HTTP) || len(a.L7.DNS) != len(b.L7.DNS) {
			return false
		}
		for i := range a.L7.HTTP {
			x, y := a.L7.HTTP[i], b.L7.HTTP[i]
			if httpRuleKey(x) != httpRuleKey(y) {
				return false
			}
		}
		for i := range a.L7.DNS {
			if a.L7.DNS[i] != b.L7.DNS[i] {
				return false
			}
		}
	}
	return true
}
