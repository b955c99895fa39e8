package datapath

import (
	"testing"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

func TestEntryMatchType(t *testing.T) {
	cases := []struct {
		name     string
		e        resolved.Entry
		wildcard bool
		want     event.MatchType
	}{
		{"peer, every port", resolved.Entry{}, false, event.MatchL3Only},
		{"peer and port", resolved.Entry{Proto: resolved.ProtoTCP, PortLo: 80, PortHi: 80}, false, event.MatchL3L4},
		{"peer and port range, any protocol", resolved.Entry{PortLo: 53, PortHi: 54}, false, event.MatchL3L4},
		{"any peer, port", resolved.Entry{Proto: resolved.ProtoTCP, PortLo: 443, PortHi: 443}, true, event.MatchL4Only},
		{"any peer, anything", resolved.Entry{}, true, event.MatchAll},
		{"peer and protocol", resolved.Entry{Proto: resolved.ProtoICMP}, false, event.MatchL3Proto},
		{"peer, every port of a protocol", resolved.Entry{Proto: resolved.ProtoUDP, PortLo: 1, PortHi: 65535}, false, event.MatchL3Proto},
		{"any peer, protocol", resolved.Entry{Proto: resolved.ProtoTCP}, true, event.MatchProtoOnly},
	}
	for _, c := range cases {
		if got := entryMatchType(&c.e, c.wildcard); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

// matchTypeSelectors: a pod selector, the "cluster" entity (every pod and
// every reserved identity but world), world, and the "all" selector.
const (
	mtSelPod resolved.SelectorID = iota + 1
	mtSelCluster
	mtSelWorld
	mtSelAll
)

func matchTypeSelectors() fixtureSelectors {
	pods := []identity.NumericIdentity{300, 301}
	var cluster, all []identity.NumericIdentity
	for _, id := range identity.ReservedIdentities() {
		all = append(all, id)
		if id != identity.World && id != identity.WorldIPv4 && id != identity.WorldIPv6 {
			cluster = append(cluster, id)
		}
	}
	return fixtureSelectors{
		mtSelPod:     {300},
		mtSelCluster: append(cluster, pods...),
		mtSelWorld:   {identity.World, identity.WorldIPv4, identity.WorldIPv6},
		mtSelAll:     append(all, pods...),
	}
}

// wildcardFixture marks wildcards explicitly (WildcardSelectorSet).
type wildcardFixture struct {
	fixtureSelectors
	wild map[resolved.SelectorID]bool
}

func (w wildcardFixture) IsWildcard(sel resolved.SelectorID) bool { return w.wild[sel] }

func TestWildcardSelectors(t *testing.T) {
	sels := matchTypeSelectors()
	members := func(ids ...resolved.SelectorID) map[resolved.SelectorID][]identity.NumericIdentity {
		m := map[resolved.SelectorID][]identity.NumericIdentity{}
		for _, s := range ids {
			m[s] = sels.Identities(s)
		}
		return m
	}
	referenced := members(mtSelPod, mtSelCluster, mtSelWorld, mtSelAll)
	got := wildcardSelectors(sels, referenced)
	if len(got) != 1 || !got[mtSelAll] {
		t.Errorf("inferred wildcards %v, want only the all selector %d", got, mtSelAll)
	}
	// Alone, a pod selector covers every member of the referenced
	// selectors, but not the reserved identities: not a wildcard.
	if got := wildcardSelectors(sels, members(mtSelPod)); len(got) != 0 {
		t.Errorf("a lone pod selector inferred a wildcard: %v", got)
	}
	explicit := wildcardFixture{sels, map[resolved.SelectorID]bool{mtSelCluster: true}}
	if got := wildcardSelectors(explicit, referenced); len(got) != 1 || !got[mtSelCluster] {
		t.Errorf("explicit wildcards %v, want only %d (the set's own answer)", got, mtSelCluster)
	}
}

// TestCompiledRuleMatchTypes compiles the four shapes of Cilium's match
// types and checks the rule id of each decision names the right one.
func TestCompiledRuleMatchTypes(t *testing.T) {
	pol := &resolved.EndpointPolicy{
		Identity: 400,
		Ingress: resolved.DirectionPolicy{Enforced: true, Entries: []resolved.Entry{
			{Peer: mtSelPod, Proto: resolved.ProtoTCP, PortLo: 8080, PortHi: 8080, Verdict: resolved.Allow, Origin: ref("l3-l4")},
			{Peer: mtSelCluster, Verdict: resolved.Allow, Origin: ref("l3-only")},
			{Peer: mtSelAll, Proto: resolved.ProtoTCP, PortLo: 443, PortHi: 443, Verdict: resolved.Allow, Origin: ref("l4-only")},
		}},
		Egress: resolved.DirectionPolicy{Enforced: true, Entries: []resolved.Entry{
			{Peer: mtSelAll, Verdict: resolved.Allow, Origin: ref("all")},
			{Peer: mtSelWorld, Proto: resolved.ProtoTCP, PortLo: 25, PortHi: 25, Verdict: resolved.Deny, Origin: ref("no-smtp")},
		}},
	}
	c, err := Compile(State{Endpoints: map[uint32]*resolved.EndpointPolicy{1: pol}, Selectors: matchTypeSelectors()})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		dir    resolved.Direction
		peer   identity.NumericIdentity
		port   uint16
		want   event.MatchType
		policy string
	}{
		{resolved.Ingress, 300, 8080, event.MatchL3L4, "l3-l4"},
		// The pod is also in the cluster selector, whose L3-only entry
		// decides on other ports.
		{resolved.Ingress, 300, 9000, event.MatchL3Only, "l3-only"},
		{resolved.Ingress, identity.World, 443, event.MatchL4Only, "l4-only"},
		{resolved.Ingress, identity.World, 80, event.MatchNone, ""}, // default deny
		{resolved.Egress, identity.World, 80, event.MatchAll, "all"},
		{resolved.Egress, identity.World, 25, event.MatchL3L4, "no-smtp"},
		{resolved.Egress, 301, 25, event.MatchAll, "all"},
	}
	for _, tc := range cases {
		d := c.ReferenceLookup(1, tc.dir, tc.peer, resolved.ProtoTCP, tc.port)
		info := c.Rules[d.RuleID]
		if info.MatchType != tc.want {
			t.Errorf("%s peer %d tcp/%d: rule %d match type %s, want %s", tc.dir, tc.peer, tc.port, d.RuleID, info.MatchType, tc.want)
		}
		if tc.policy != "" && (len(info.Policies) != 1 || info.Policies[0].Name != tc.policy) {
			t.Errorf("%s peer %d tcp/%d: rule %d policies %v, want %s", tc.dir, tc.peer, tc.port, d.RuleID, info.Policies, tc.policy)
		}
	}
}

// TestDecidingMatchTypePrefersTheMostSpecific: of entries of one selector
// that decide together, the match type is the most specific one's (a port
// before a protocol before every port).
func TestDecidingMatchTypePrefersTheMostSpecific(t *testing.T) {
	l3 := &resolved.Entry{}
	proto := &resolved.Entry{Proto: resolved.ProtoTCP}
	port := &resolved.Entry{Proto: resolved.ProtoTCP, PortLo: 80, PortHi: 80}
	if got := decidingMatchType([]*resolved.Entry{l3, port, proto}, false); got != event.MatchL3L4 {
		t.Errorf("specific peer: %s, want L3-L4", got)
	}
	if got := decidingMatchType([]*resolved.Entry{l3, proto}, true); got != event.MatchProtoOnly {
		t.Errorf("wildcard peer: %s, want Proto-Only", got)
	}
}
