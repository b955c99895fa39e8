package event

// MatchType is what of a packet the policy entry that decided it matched:
// the peer identity, the destination port, both or neither. The numbering
// is Cilium's policy match type (its monitor API and flow.Flow's
// policy_match_type), so the value goes to Hubble unchanged.
type MatchType uint8

const (
	MatchNone      MatchType = 0 // no entry decided (a default verdict)
	MatchL3Only    MatchType = 1 // a specific peer, every protocol and port
	MatchL3L4      MatchType = 2 // a specific peer and a destination port
	MatchL4Only    MatchType = 3 // every peer, a destination port
	MatchAll       MatchType = 4 // every peer, every protocol and port
	MatchL3Proto   MatchType = 5 // a specific peer and a protocol, every port
	MatchProtoOnly MatchType = 6 // every peer, a protocol, every port
)

// String is the name Cilium and Hubble print ("L3-L4", "all", ...;
// "unknown" beyond the known values).
func (m MatchType) String() string {
	switch m {
	case MatchNone:
		return "none"
	case MatchL3Only:
		return "L3-Only"
	case MatchL3L4:
		return "L3-L4"
	case MatchL4Only:
		return "L4-Only"
	case MatchAll:
		return "all"
	case MatchL3Proto:
		return "L3-Proto"
	case MatchProtoOnly:
		return "Proto-Only"
	}
	return "unknown" // as Cilium
}

// Specificity orders match types the way Cilium's datapath prefers the
// entry that decides when several allow a packet: a longer port prefix
// first (port, then protocol, then nothing), a specific peer before every
// peer at equal port prefix. Higher is more specific; MatchNone is 0.
func (m MatchType) Specificity() int {
	switch m {
	case MatchL3L4:
		return 6
	case MatchL4Only:
		return 5
	case MatchL3Proto:
		return 4
	case MatchProtoOnly:
		return 3
	case MatchL3Only:
		return 2
	case MatchAll:
		return 1
	}
	return 0
}
