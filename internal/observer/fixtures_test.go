package observer

import (
	"net/netip"
	"time"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// staticResolver is an in-memory Resolver over a fixed cluster: the demo
// application of the seed article (frontend, backend, database in "demo").
type staticResolver struct {
	byID      map[uint32]EndpointInfo
	byIP      map[netip.Addr]EndpointInfo
	idLabels  map[identity.NumericIdentity][]string
	rules     map[uint32][]resolved.PolicyRef
	matches   map[uint32]event.MatchType
	selecting map[uint32][2][]resolved.PolicyRef // endpoint → [ingress, egress]
}

func (r *staticResolver) EndpointByID(id uint32) (EndpointInfo, bool) {
	e, ok := r.byID[id]
	return e, ok
}

func (r *staticResolver) EndpointByIP(ip netip.Addr) (EndpointInfo, bool) {
	e, ok := r.byIP[ip]
	return e, ok
}

func (r *staticResolver) IdentityLabels(id identity.NumericIdentity) []string { return r.idLabels[id] }

func (r *staticResolver) RulePolicies(ruleID uint32) []resolved.PolicyRef { return r.rules[ruleID] }

func (r *staticResolver) RuleMatchType(ruleID uint32) event.MatchType { return r.matches[ruleID] }

func (r *staticResolver) SelectingPolicies(ep uint32, dir resolved.Direction) []resolved.PolicyRef {
	return r.selecting[ep][dir]
}

var (
	frontendIP = netip.MustParseAddr("10.200.0.10")
	backendIP  = netip.MustParseAddr("10.200.0.20")
	databaseIP = netip.MustParseAddr("10.200.0.30")
	worldIP    = netip.MustParseAddr("192.0.2.7")

	frontendV6 = netip.MustParseAddr("fd00:200::10")
	backendV6  = netip.MustParseAddr("fd00:200::20")
)

const (
	frontendEP, backendEP, databaseEP = 101, 102, 103
	frontendID, backendID, databaseID = identity.NumericIdentity(1001), identity.NumericIdentity(1002), identity.NumericIdentity(1003)
	ruleAllowFrontend, ruleDenyWorld  = 7, 9
)

var (
	defaultDeny     = resolved.PolicyRef{Kind: "NetworkPolicy", Namespace: "demo", Name: "default-deny"}
	frontendBackend = resolved.PolicyRef{Kind: "CiliumNetworkPolicy", Namespace: "demo", Name: "frontend-to-backend"}
	denyWorld       = resolved.PolicyRef{Kind: "CiliumClusterwideNetworkPolicy", Name: "deny-world"}
)

func demoResolver() *staticResolver {
	pod := func(ep uint32, id identity.NumericIdentity, name, app string) EndpointInfo {
		return EndpointInfo{ID: ep, Identity: id, Namespace: "demo", PodName: name,
			Labels: PodLabels("demo", map[string]string{"app": app, "tier": "web"})}
	}
	fe := pod(frontendEP, frontendID, "frontend-7d4b9c", "frontend")
	be := pod(backendEP, backendID, "backend-5f6a8b", "backend")
	db := pod(databaseEP, databaseID, "database-0", "database")
	return &staticResolver{
		byID: map[uint32]EndpointInfo{frontendEP: fe, backendEP: be, databaseEP: db},
		byIP: map[netip.Addr]EndpointInfo{frontendIP: fe, backendIP: be, databaseIP: db, frontendV6: fe, backendV6: be},
		idLabels: map[identity.NumericIdentity][]string{
			frontendID: fe.Labels, backendID: be.Labels, databaseID: db.Labels,
		},
		rules: map[uint32][]resolved.PolicyRef{
			ruleAllowFrontend: {frontendBackend},
			ruleDenyWorld:     {denyWorld},
		},
		matches: map[uint32]event.MatchType{
			ruleAllowFrontend: event.MatchL3L4,
			ruleDenyWorld:     event.MatchL3Only,
		},
		selecting: map[uint32][2][]resolved.PolicyRef{
			backendEP:  {{defaultDeny, frontendBackend}, {defaultDeny}},
			databaseEP: {{defaultDeny}, nil},
		},
	}
}

var baseTime = time.Date(2026, 11, 26, 4, 0, 0, 0, time.UTC)

// allowedSYN: frontend → backend:8080 allowed at the backend's ingress.
func allowedSYN(at time.Duration) event.Event {
	return event.Event{
		Time: baseTime.Add(at), Type: event.TypePolicyVerdict, EndpointID: backendEP,
		Direction: resolved.Ingress, Verdict: event.Forwarded,
		SrcIdentity: frontendID, DstIdentity: backendID, Src: frontendIP, Dst: backendIP,
		SrcPort: 43210, DstPort: 8080, Proto: resolved.ProtoTCP, TCPFlags: 0x02, Bytes: 74,
		RuleID: ruleAllowFrontend,
	}
}

// deniedSYN: frontend → database:5432 dropped by the database's default deny.
func deniedSYN(at time.Duration) event.Event {
	return event.Event{
		Time: baseTime.Add(at), Type: event.TypeDrop, EndpointID: databaseEP,
		Direction: resolved.Ingress, Verdict: event.Dropped, Reason: event.ReasonPolicyDenied,
		SrcIdentity: frontendID, DstIdentity: databaseID, Src: frontendIP, Dst: databaseIP,
		SrcPort: 43211, DstPort: 5432, Proto: resolved.ProtoTCP, TCPFlags: 0x02, Bytes: 74,
	}
}

// deniedWorld: backend → world:443 dropped by an explicit deny at egress.
func deniedWorld(at time.Duration) event.Event {
	return event.Event{
		Time: baseTime.Add(at), Type: event.TypeDrop, EndpointID: backendEP,
		Direction: resolved.Egress, Verdict: event.Dropped, Reason: event.ReasonPolicyDenyRule,
		SrcIdentity: backendID, DstIdentity: identity.World, Src: backendIP, Dst: worldIP,
		SrcPort: 50000, DstPort: 443, Proto: resolved.ProtoTCP, TCPFlags: 0x02, Bytes: 60,
		RuleID: ruleDenyWorld,
	}
}

// dnsQuery: frontend → backend:53/udp allowed at the frontend's egress
// (a default allow: no rule).
func dnsQuery(at time.Duration) event.Event {
	return event.Event{
		Time: baseTime.Add(at), Type: event.TypePolicyVerdict, EndpointID: frontendEP,
		Direction: resolved.Egress, Verdict: event.Forwarded,
		SrcIdentity: frontendID, DstIdentity: backendID, Src: frontendIP, Dst: backendIP,
		SrcPort: 40000, DstPort: 53, Proto: resolved.ProtoUDP, Bytes: 80,
	}
}
