package datapath

import (
	"math/rand"
	"testing"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// TestCompiledTablesAgreeWithResolvedLookup checks, on random tables, that
// the compiled LPM tables (as the datapath walks them) decide exactly what
// resolved.DirectionPolicy.Lookup decides, and that the rule id names only
// policies of the reference decision.
func TestCompiledTablesAgreeWithResolvedLookup(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	protos := []resolved.Protocol{resolved.ProtoAny, resolved.ProtoTCP, resolved.ProtoUDP, resolved.ProtoSCTP, resolved.ProtoICMP, resolved.ProtoICMPv6}
	probeProtos := []resolved.Protocol{resolved.ProtoTCP, resolved.ProtoUDP, resolved.ProtoSCTP, resolved.ProtoICMP, resolved.ProtoICMPv6, 47}
	verdicts := []resolved.Verdict{resolved.Allow, resolved.Allow, resolved.Deny, resolved.Redirect}
	ids := []identity.NumericIdentity{identity.World, 300, 301, 302, 303}
	for round := 0; round < 300; round++ {
		sels := fixtureSelectors{}
		for s := resolved.SelectorID(1); s <= 4; s++ {
			for _, id := range ids {
				if rng.Intn(2) == 0 {
					sels[s] = append(sels[s], id)
				}
			}
		}
		var ports []uint16
		mk := func() resolved.DirectionPolicy {
			dp := resolved.DirectionPolicy{Enforced: rng.Intn(3) != 0}
			for i := rng.Intn(8); i > 0; i-- {
				e := resolved.Entry{
					Peer:    resolved.SelectorID(1 + rng.Intn(4)),
					Proto:   protos[rng.Intn(len(protos))],
					Verdict: verdicts[rng.Intn(len(verdicts))],
					Origin:  ref(string(rune('a' + rng.Intn(6)))),
				}
				switch rng.Intn(4) {
				case 0: // all ports
				case 1:
					e.PortLo = uint16(rng.Intn(100))
					e.PortHi = e.PortLo
				default:
					e.PortLo = uint16(rng.Intn(100))
					e.PortHi = e.PortLo + uint16(rng.Intn(50))
				}
				ports = append(ports, e.PortLo, e.PortHi, e.PortHi+1, e.PortLo-1)
				dp.Entries = append(dp.Entries, e)
			}
			return dp
		}
		pol := &resolved.EndpointPolicy{Identity: 999, Ingress: mk(), Egress: mk()}
		st := State{Endpoints: map[uint32]*resolved.EndpointPolicy{1: pol}, Selectors: sels,
			ProxyPort: func(uint32, resolved.Direction, *resolved.Entry) uint16 { return 15001 }}
		c, err := Compile(st)
		if err != nil {
			t.Fatal(err)
		}
		ports = append(ports, 0, 1, 65535, 200)
		for _, dir := range []resolved.Direction{resolved.Ingress, resolved.Egress} {
			for _, peer := range ids {
				for _, proto := range probeProtos {
					for _, port := range ports {
						want := pol.Dir(dir).Lookup(sels, peer, proto, port)
						got := c.ReferenceLookup(1, dir, peer, proto, port)
						if got.Verdict != want.Verdict {
							t.Fatalf("round %d %s peer %d %s/%d: compiled %s, resolved %s\nentries %+v\nselectors %v",
								round, dir, peer, proto, port, got.Verdict, want.Verdict, pol.Dir(dir).Entries, sels)
						}
						refs := map[resolved.PolicyRef]bool{}
						for _, r := range want.Policies(pol.Dir(dir)) {
							refs[r] = true
						}
						for _, r := range c.Rules[got.RuleID].Policies {
							if !refs[r] {
								t.Fatalf("round %d: rule %d names %s outside %v", round, got.RuleID, r, want.Policies(pol.Dir(dir)))
							}
						}
					}
				}
			}
		}
	}
}
