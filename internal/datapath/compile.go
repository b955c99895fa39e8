package datapath

import (
	"fmt"
	"hash/fnv"
	"slices"
	"sort"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// MaxSelectorsPerIdentity bounds the selector list of one identity (the C
// constant BW_MAX_SELECTORS). An identity in more referenced selectors
// fails closed: every new flow with it as peer is dropped.
const MaxSelectorsPerIdentity = 64

const (
	policyFullBits  = 96 // prefixlen covering table, selector, dir, proto, port
	policyProtoBits = 80 // prefixlen covering everything but the port
)

// TableKey is one policy LPM entry without its table id: the port prefix
// PortBits long (0 = every port) under (Dir, Selector, Proto).
type TableKey struct {
	Dir      resolved.Direction
	Selector resolved.SelectorID
	Proto    resolved.Protocol // 0 = the verdicts of ProtoAny entries
	Port     uint16            // host byte order, low bits beyond PortBits zero
	PortBits uint8
}

// TableValue is what a TableKey decides.
type TableValue struct {
	// Verdict: Allow, Deny, Redirect or AuditDeny (an audit-mode deny
	// alone). Audit on an Allow or a Redirect: an audit-mode deny matches
	// too, and RuleID names it (BW_POLICY_F_AUDIT).
	Verdict   resolved.Verdict
	Audit     bool
	ProxyPort uint16
	RuleID    uint32
}

// CompiledEndpoint is an endpoint's policy as the datapath holds it.
type CompiledEndpoint struct {
	Identity       identity.NumericIdentity
	EnforceIngress bool
	EnforceEgress  bool
	// AuditIngress/AuditEgress: not enforced, but no match passes as an
	// audit verdict (resolved.DirectionPolicy.Audit).
	AuditIngress bool
	AuditEgress  bool
	Entries      map[TableKey]TableValue

	// groups: each (direction, peer selector)'s entries and what they
	// compiled to, reused by the next incremental compile of the endpoint
	// when they are the same.
	groups map[groupKey]*compiledGroup
}

type groupKey struct {
	dir resolved.Direction
	sel resolved.SelectorID
}

// compiledGroup is what one (direction, selector) compiled from: its
// entries (values), the selector's wildcard status and the proxy ports of
// its Redirect entries; out is the result.
type compiledGroup struct {
	entries  []resolved.Entry
	wildcard bool
	ports    []uint16
	out      map[TableKey]TableValue
}

func (g *compiledGroup) same(entries []*resolved.Entry, wildcard bool, ports []uint16) bool {
	if g == nil || g.wildcard != wildcard || len(g.entries) != len(entries) || !slices.Equal(g.ports, ports) {
		return false
	}
	for i, e := range entries {
		if !sameEntry(&g.entries[i], e) {
			return false
		}
	}
	return true
}

// sameEntry: the fields compiling reads (L7 only through the proxy port).
func sameEntry(a, b *resolved.Entry) bool {
	return a.Peer == b.Peer && a.Proto == b.Proto && a.PortLo == b.PortLo && a.PortHi == b.PortHi &&
		a.Verdict == b.Verdict && slices.Equal(a.Origin, b.Origin)
}

// auditFlags are the endpoint record's audit-default flags.
func (ce *CompiledEndpoint) auditFlags() uint32 {
	var f uint32
	if ce.AuditIngress && !ce.EnforceIngress {
		f |= epFlagAuditIngress
	}
	if ce.AuditEgress && !ce.EnforceEgress {
		f |= epFlagAuditEgress
	}
	for _, v := range ce.Entries {
		if v.Verdict == resolved.AuditDeny || v.Audit {
			f |= epFlagHasAudit
			break
		}
	}
	return f
}

// Compiled is a State turned into datapath tables. The C program and
// ReferenceLookup both evaluate exactly these tables.
type Compiled struct {
	Endpoints map[uint32]*CompiledEndpoint
	// SelectorLists: identity -> referenced selectors it belongs to, in
	// ascending selector order (the order the datapath iterates).
	SelectorLists map[identity.NumericIdentity][]resolved.SelectorID
	// Overflowed identities belong to more than MaxSelectorsPerIdentity
	// referenced selectors.
	Overflowed map[identity.NumericIdentity]int
	// Rules maps a rule id to what is behind it.
	Rules map[uint32]RuleInfo

	// referenced: the selectors endpoint entries use, ascending; wildcard:
	// those compiled as matching every identity. UpdateIdentities
	// recomputes selector lists from them.
	referenced []resolved.SelectorID
	wildcard   map[resolved.SelectorID]bool

	// What an incremental sync (SyncChanges) starts from: the selectors
	// each endpoint uses, how many endpoints use each, the membership the
	// selector lists were computed from (the slices the selector set
	// returned: compared by identity) and the rule ids given so far.
	epRefs   map[uint32][]resolved.SelectorID
	refCount map[resolved.SelectorID]int
	members  map[resolved.SelectorID][]identity.NumericIdentity
	interner *ruleInterner
	// relisted: identities whose lists UpdateIdentities computed from a
	// newer selector set than members.
	relisted map[identity.NumericIdentity]struct{}
}

// RuleInfo is what a rule id stands for: the policies whose entries
// decided and the shape of the entry (what of the packet it matched).
// Invariant: entries with the same rule id have the same policies and
// match type, so an event's rule id alone gives both.
type RuleInfo struct {
	Policies  []resolved.PolicyRef // sorted, distinct
	MatchType event.MatchType      // never MatchNone for an interned rule
}

// ruleInterner gives a stable id to each distinct (policies, match type):
// the FNV-1a hash of the sorted policy names and the match type, probed
// linearly on collision, so ids survive an agent restart without persisted
// state.
type ruleInterner struct {
	byKey map[string]uint32
	rules map[uint32]RuleInfo
	kept  int // rules kept by the last prune
}

// prune forgets the rules no compiled entry uses any more, once they
// outnumber the ones in use: an incremental sync keeps one interner, whose
// rules would otherwise grow with every policy ever seen.
func (ri *ruleInterner) prune(eps map[uint32]*CompiledEndpoint) {
	if len(ri.rules) <= 2*ri.kept+1024 {
		return
	}
	used := map[uint32]bool{}
	for _, ce := range eps {
		for _, v := range ce.Entries {
			used[v.RuleID] = true
		}
	}
	for k, id := range ri.byKey {
		if !used[id] {
			delete(ri.byKey, k)
			delete(ri.rules, id)
		}
	}
	ri.kept = len(ri.rules)
}

func newRuleInterner() *ruleInterner {
	return &ruleInterner{byKey: map[string]uint32{}, rules: map[uint32]RuleInfo{}}
}

func (ri *ruleInterner) intern(refs []resolved.PolicyRef, mt event.MatchType) uint32 {
	refs = dedupRefs(refs)
	if len(refs) == 0 {
		return 0
	}
	key := ""
	for _, r := range refs {
		key += r.Kind + "\x00" + r.Namespace + "\x00" + r.Name + "\x01"
	}
	key += "\x02" + mt.String()
	if id, ok := ri.byKey[key]; ok {
		return id
	}
	h := fnv.New32a()
	h.Write([]byte(key))
	id := h.Sum32()
	for {
		if _, taken := ri.rules[id]; id != 0 && !taken {
			break
		}
		id++
	}
	ri.byKey[key] = id
	ri.rules[id] = RuleInfo{Policies: refs, MatchType: mt}
	return id
}

func dedupRefs(refs []resolved.PolicyRef) []resolved.PolicyRef {
	out := append([]resolved.PolicyRef(nil), refs...)
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	n := 0
	for i, r := range out {
		if i > 0 && r == out[n-1] {
			continue
		}
		out[n] = r
		n++
	}
	return out[:n]
}

// Compile turns the desired state into datapath tables.
func Compile(st State) (*Compiled, error) {
	c := &Compiled{
		Endpoints:     map[uint32]*CompiledEndpoint{},
		SelectorLists: map[identity.NumericIdentity][]resolved.SelectorID{},
		Overflowed:    map[identity.NumericIdentity]int{},
		epRefs:        make(map[uint32][]resolved.SelectorID, len(st.Endpoints)),
		refCount:      map[resolved.SelectorID]int{},
		interner:      newRuleInterner(),
		relisted:      map[identity.NumericIdentity]struct{}{},
	}
	for epID, pol := range st.Endpoints {
		if err := validateEndpoint(epID, pol); err != nil {
			return nil, err
		}
		refs := endpointRefs(pol)
		c.epRefs[epID] = refs
		for _, s := range refs {
			c.refCount[s]++
		}
	}
	if len(c.refCount) > 0 && st.Selectors == nil {
		return nil, fmt.Errorf("compile: state has policy entries but no selector set")
	}
	c.members = make(map[resolved.SelectorID][]identity.NumericIdentity, len(c.refCount))
	for s := range c.refCount {
		c.members[s] = st.Selectors.Identities(s)
	}
	c.wildcard = wildcardSelectors(st.Selectors, c.members)
	for epID, pol := range st.Endpoints {
		c.Endpoints[epID] = compileEndpoint(epID, pol, c.wildcard, st.ProxyPort, c.interner, nil)
	}
	sels := make([]resolved.SelectorID, 0, len(c.refCount))
	for s := range c.refCount {
		sels = append(sels, s)
	}
	sort.Slice(sels, func(i, j int) bool { return sels[i] < sels[j] })
	for _, s := range sels {
		for _, id := range c.members[s] {
			l := c.SelectorLists[id]
			if n := len(l); n > 0 && l[n-1] == s {
				continue // a duplicate member
			}
			c.SelectorLists[id] = append(l, s)
		}
	}
	for id, l := range c.SelectorLists {
		if len(l) > MaxSelectorsPerIdentity {
			c.Overflowed[id] = len(l)
		}
	}
	c.Rules = c.interner.rules
	c.referenced = sels
	return c, nil
}

// validateEndpoint refuses what compileEndpoint cannot compile.
func validateEndpoint(epID uint32, pol *resolved.EndpointPolicy) error {
	if pol == nil {
		return fmt.Errorf("compile endpoint %d: nil policy", epID)
	}
	for _, dir := range []resolved.Direction{resolved.Ingress, resolved.Egress} {
		for i, e := range pol.Dir(dir).Entries {
			switch e.Verdict {
			case resolved.Allow, resolved.Deny, resolved.Redirect, resolved.AuditDeny:
			default:
				return fmt.Errorf("compile endpoint %d %s entry %d: verdict %d is not allow, deny, redirect or audit-deny", epID, dir, i, e.Verdict)
			}
		}
	}
	return nil
}

// endpointRefs are the distinct peer selectors an endpoint's entries use,
// ascending (an entry with an empty port range matches nothing and uses
// none).
func endpointRefs(pol *resolved.EndpointPolicy) []resolved.SelectorID {
	var out []resolved.SelectorID
	for _, dir := range []resolved.Direction{resolved.Ingress, resolved.Egress} {
		for _, e := range pol.Dir(dir).Entries {
			if e.PortHi >= e.PortLo {
				out = append(out, e.Peer)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// compileEndpoint compiles one validated endpoint policy; the groups of
// prev (the endpoint's previous compilation, or nil) whose entries, wildcard
// status and proxy ports are the same are reused.
func compileEndpoint(epID uint32, pol *resolved.EndpointPolicy, wildcards map[resolved.SelectorID]bool,
	proxy ProxyPortFunc, ri *ruleInterner, prev *CompiledEndpoint) *CompiledEndpoint {
	ce := &CompiledEndpoint{
		Identity:       pol.Identity,
		EnforceIngress: pol.Ingress.Enforced,
		EnforceEgress:  pol.Egress.Enforced,
		AuditIngress:   pol.Ingress.Audit && !pol.Ingress.Enforced,
		AuditEgress:    pol.Egress.Audit && !pol.Egress.Enforced,
		Entries:        map[TableKey]TableValue{},
		groups:         map[groupKey]*compiledGroup{},
	}
	if prev != nil {
		ce.Entries = make(map[TableKey]TableValue, len(prev.Entries))
		ce.groups = make(map[groupKey]*compiledGroup, len(prev.groups))
	}
	for _, dir := range []resolved.Direction{resolved.Ingress, resolved.Egress} {
		dp := pol.Dir(dir)
		bySel := make(map[resolved.SelectorID][]*resolved.Entry, len(dp.Entries))
		for i := range dp.Entries {
			e := &dp.Entries[i]
			if e.PortHi < e.PortLo {
				continue // an empty range matches nothing (as resolved.Entry.MatchesPort)
			}
			bySel[e.Peer] = append(bySel[e.Peer], e)
		}
		for sel, entries := range bySel {
			key := groupKey{dir, sel}
			var ports []uint16
			for _, e := range entries {
				if e.Verdict == resolved.Redirect {
					var p uint16
					if proxy != nil {
						p = proxy(epID, dir, e)
					}
					ports = append(ports, p)
				}
			}
			g := (*compiledGroup)(nil)
			if prev != nil {
				g = prev.groups[key]
			}
			if !g.same(entries, wildcards[sel], ports) {
				g = &compiledGroup{wildcard: wildcards[sel], ports: ports, out: map[TableKey]TableValue{}}
				for _, e := range entries {
					g.entries = append(g.entries, *e)
				}
				compileSelector(g.out, selectorCompilation{epID: epID, dir: dir, sel: sel, wildcard: wildcards[sel]},
					entries, proxy, ri)
			}
			ce.groups[key] = g
			for k, v := range g.out {
				ce.Entries[k] = v
			}
		}
	}
	return ce
}

// entryRange is the inclusive port range an entry covers (0..0 = all).
func entryRange(e *resolved.Entry) (uint16, uint16) {
	if e.PortLo == 0 && e.PortHi == 0 {
		return 0, 65535
	}
	return e.PortLo, e.PortHi
}

// ownEntryProtos are the protocols the datapath looks up under their own
// number only (has_own_entries in bpf/datapath.c): their tables hold the
// ProtoAny entries folded in.
var ownEntryProtos = []resolved.Protocol{resolved.ProtoTCP, resolved.ProtoUDP, resolved.ProtoSCTP, resolved.ProtoICMP, resolved.ProtoICMPv6}

func hasOwnEntries(p resolved.Protocol) bool {
	for _, q := range ownEntryProtos {
		if p == q {
			return true
		}
	}
	return false
}

// selectorCompilation names the (endpoint, direction, peer selector) whose
// entries compileSelector combines; wildcard: the selector matches every
// identity.
type selectorCompilation struct {
	epID     uint32
	dir      resolved.Direction
	sel      resolved.SelectorID
	wildcard bool
}

// compileSelector writes the entries of one (dir, selector): for each
// protocol named by an entry (and for TCP, UDP, SCTP when ProtoAny entries
// exist), the combined verdict of its own and ProtoAny entries over the
// port space; for ICMP/ICMPv6 the port-less verdict; for proto 0 the
// ProtoAny entries alone (used for the other protocols).
func compileSelector(out map[TableKey]TableValue, sc selectorCompilation,
	entries []*resolved.Entry, proxy ProxyPortFunc, ri *ruleInterner) {
	epID, dir, sel := sc.epID, sc.dir, sc.sel
	protos := map[resolved.Protocol]bool{}
	var anyL3, anyPorts bool
	for _, e := range entries {
		switch {
		case e.Proto != resolved.ProtoAny:
			protos[e.Proto] = true
		case e.PortLo == 0 && e.PortHi == 0:
			anyL3 = true
		default:
			anyPorts = true
		}
	}
	if anyL3 {
		protos[resolved.ProtoICMP] = true
		protos[resolved.ProtoICMPv6] = true
	}
	if anyL3 || anyPorts {
		// The datapath looks these up under their own number only.
		for _, p := range ownEntryProtos {
			protos[p] = true
		}
	}
	value := func(matched []*resolved.Entry) (TableValue, bool) {
		var deny, redirect, audit, allow []*resolved.Entry
		for _, e := range matched {
			switch e.Verdict {
			case resolved.Deny:
				deny = append(deny, e)
			case resolved.AuditDeny:
				audit = append(audit, e)
			case resolved.Redirect:
				redirect = append(redirect, e)
			case resolved.Allow:
				allow = append(allow, e)
			}
		}
		var win []*resolved.Entry
		v := TableValue{}
		switch {
		case len(deny) > 0:
			v.Verdict, win = resolved.Deny, deny
		case len(redirect) > 0:
			v.Verdict, win = resolved.Redirect, append(redirect, allow...)
			if proxy != nil {
				for _, e := range redirect {
					if p := proxy(epID, dir, e); p != 0 {
						v.ProxyPort = p
						break
					}
				}
			}
			if len(audit) > 0 {
				// The redirect passes flagged: the audit policies are named.
				v.Audit, win = true, audit
			}
		case len(audit) > 0:
			// The audit policies are named; an allow only lets it pass.
			v.Verdict, win = resolved.AuditDeny, audit
			if len(allow) > 0 {
				v.Verdict, v.Audit = resolved.Allow, true
			}
		case len(allow) > 0:
			v.Verdict, win = resolved.Allow, allow
		default:
			return v, false
		}
		var refs []resolved.PolicyRef
		for _, e := range win {
			refs = append(refs, e.Origin...)
		}
		v.RuleID = ri.intern(refs, decidingMatchType(win, sc.wildcard))
		return v, true
	}
	for proto := range protos {
		if proto == resolved.ProtoICMP || proto == resolved.ProtoICMPv6 {
			var matched []*resolved.Entry
			for _, e := range entries {
				if e.MatchesPort(proto, 0) {
					matched = append(matched, e)
				}
			}
			if v, ok := value(matched); ok {
				out[TableKey{Dir: dir, Selector: sel, Proto: proto}] = v
			}
			continue
		}
		var relevant []*resolved.Entry
		for _, e := range entries {
			if e.Proto == proto || e.Proto == resolved.ProtoAny {
				relevant = append(relevant, e)
			}
		}
		addPortSegments(out, dir, sel, proto, relevant, value)
	}
	var anyEntries []*resolved.Entry
	for _, e := range entries {
		if e.Proto == resolved.ProtoAny {
			anyEntries = append(anyEntries, e)
		}
	}
	addPortSegments(out, dir, sel, resolved.ProtoAny, anyEntries, value)
}

// addPortSegments splits the port space at every entry boundary, combines
// the verdicts of each segment, merges equal neighbours and stores each
// resulting range as LPM prefixes.
func addPortSegments(out map[TableKey]TableValue, dir resolved.Direction, sel resolved.SelectorID,
	proto resolved.Protocol, entries []*resolved.Entry, value func([]*resolved.Entry) (TableValue, bool)) {
	if len(entries) == 0 {
		return
	}
	cuts := map[uint32]bool{0: true}
	for _, e := range entries {
		lo, hi := entryRange(e)
		cuts[uint32(lo)] = true
		cuts[uint32(hi)+1] = true
	}
	bounds := make([]uint32, 0, len(cuts))
	for b := range cuts {
		if b <= 65535 {
			bounds = append(bounds, b)
		}
	}
	sort.Slice(bounds, func(i, j int) bool { return bounds[i] < bounds[j] })
	type seg struct {
		lo, hi uint32
		v      TableValue
	}
	var segs []seg
	for i, lo := range bounds {
		hi := uint32(65535)
		if i+1 < len(bounds) {
			hi = bounds[i+1] - 1
		}
		var matched []*resolved.Entry
		for _, e := range entries {
			elo, ehi := entryRange(e)
			if uint32(elo) <= lo && hi <= uint32(ehi) {
				matched = append(matched, e)
			}
		}
		v, ok := value(matched)
		if !ok {
			continue
		}
		if n := len(segs); n > 0 && segs[n-1].hi+1 == lo && segs[n-1].v == v {
			segs[n-1].hi = hi
			continue
		}
		segs = append(segs, seg{lo, hi, v})
	}
	for _, s := range segs {
		for _, p := range rangeToPrefixes(uint16(s.lo), uint16(s.hi)) {
			out[TableKey{Dir: dir, Selector: sel, Proto: proto, Port: p.port, PortBits: p.bits}] = s.v
		}
	}
}

type portPrefix struct {
	port uint16
	bits uint8
}

// rangeToPrefixes covers lo..hi exactly with the fewest aligned prefixes.
func rangeToPrefixes(lo, hi uint16) []portPrefix {
	var out []portPrefix
	l, h := uint32(lo), uint32(hi)
	for l <= h {
		size := uint32(1)
		bits := uint8(16)
		for bits > 0 {
			next := size << 1
			if l%next != 0 || l+next-1 > h {
				break
			}
			size = next
			bits--
		}
		out = append(out, portPrefix{uint16(l), bits})
		l += size
	}
	return out
}

// PortRange returns the inclusive range a prefix covers.
func (k TableKey) PortRange() (uint16, uint16) {
	if k.PortBits == 0 {
		return 0, 65535
	}
	span := uint32(1) << (16 - uint32(k.PortBits))
	return k.Port, uint16(uint32(k.Port) + span - 1)
}

// policyFlagAudit is BW_POLICY_F_AUDIT: an Allow or Redirect value where
// an audit-mode deny matches too (its RuleID names the audit policies).
const policyFlagAudit = 1

// policyValue is a TableValue as the bw_policy map holds it.
func policyValue(v TableValue) bpfBwPolicyValue {
	pv := bpfBwPolicyValue{Verdict: uint8(v.Verdict), ProxyPort: v.ProxyPort, RuleId: v.RuleID}
	if v.Audit {
		pv.Flags = policyFlagAudit
	}
	return pv
}
