package datapath

import (
	"slices"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// WildcardSelectorSet is a SelectorSet that knows which of its selectors
// match every identity (the engine's "all" selector, entity "all", a
// rule without peers). Compile uses it when State.Selectors implements it;
// otherwise it infers wildcards from membership (see wildcardSelectors).
type WildcardSelectorSet interface {
	resolved.SelectorSet
	// IsWildcard reports whether sel matches every identity.
	IsWildcard(sel resolved.SelectorID) bool
}

// wildcardSelectors returns the referenced selectors (members: selector →
// its sorted identities) that match every identity. Without
// WildcardSelectorSet a selector is a wildcard when its members include every reserved identity (world, host, ...) and every
// member of every other referenced selector: only a selector without
// requirements does (pod selectors never hold reserved identities; entity
// and CIDR selectors never hold pods).
func wildcardSelectors(sels resolved.SelectorSet, members map[resolved.SelectorID][]identity.NumericIdentity) map[resolved.SelectorID]bool {
	out := map[resolved.SelectorID]bool{}
	if w, ok := sels.(WildcardSelectorSet); ok {
		for s := range members {
			if w.IsWildcard(s) {
				out[s] = true
			}
		}
		return out
	}
	// Candidates hold every reserved identity (a binary search each);
	// usually none is, and the universe is not built.
	reserved := identity.ReservedIdentities()
	var candidates []resolved.SelectorID
	for s, ids := range members {
		all := true
		for _, r := range reserved {
			if _, found := slices.BinarySearch(ids, r); !found {
				all = false
				break
			}
		}
		if all {
			candidates = append(candidates, s)
		}
	}
	if len(candidates) == 0 {
		return out
	}
	universe := map[identity.NumericIdentity]bool{}
	for _, id := range reserved {
		universe[id] = true
	}
	for _, ids := range members {
		for _, id := range ids {
			universe[id] = true
		}
	}
	for _, s := range candidates {
		ids := members[s]
		if len(ids) < len(universe) {
			continue
		}
		// ids is sorted (SelectorSet.Identities): counting each distinct
		// member once, holding len(universe) of them is holding them all.
		n := 0
		for i, id := range ids {
			if (i == 0 || ids[i-1] != id) && universe[id] {
				n++
			}
		}
		if n == len(universe) {
			out[s] = true
		}
	}
	return out
}

// entryMatchType is the shape of an entry: whether it names its peers
// (wildcard false) and how much of the packet's L4 it names. A port range
// covering every port names the protocol only; a ProtoAny entry with a
// port range applies to the port-bearing protocols (as MatchesPort).
func entryMatchType(e *resolved.Entry, wildcard bool) event.MatchType {
	everyPort := e.PortLo == 0 && e.PortHi == 0
	portRange := !everyPort && !(e.PortLo <= 1 && e.PortHi == 65535)
	protoOnly := !portRange && (e.Proto != resolved.ProtoAny || !everyPort)
	switch {
	case portRange && wildcard:
		return event.MatchL4Only
	case portRange:
		return event.MatchL3L4
	case protoOnly && wildcard:
		return event.MatchProtoOnly
	case protoOnly:
		return event.MatchL3Proto
	case wildcard:
		return event.MatchAll
	}
	return event.MatchL3Only
}

// decidingMatchType is the match type of the most specific of the entries
// that decided (Cilium's precedence between entries of equal verdict).
func decidingMatchType(win []*resolved.Entry, wildcard bool) event.MatchType {
	best := event.MatchNone
	for _, e := range win {
		if m := entryMatchType(e, wildcard); m.Specificity() > best.Specificity() {
			best = m
		}
	}
	return best
}
