// Package proxy is the contract between the datapath's transparent redirect,
// which hands the agent the connections (and DNS datagrams) that a policy
// sends to an L7 proxy, and the L7 proxies that enforce rules on them
// (internal/proxy/http, internal/proxy/dns).
//
// Invariants every proxy keeps:
//   - Fail closed: a flow whose rules cannot be found, or whose upstream
//     cannot be dialled as the original source, is refused, never passed.
//   - A request is forwarded only when every Stage of its Policy allows it
//     (the source's egress rules and the destination's ingress rules are
//     both enforced; a direction without L7 rules has no Stage).
//   - Every request (allowed or not) becomes one Record.
package proxy

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// Flow is one redirected connection or datagram exchange, as the datapath
// saw it before the redirect.
type Flow struct {
	Src, Dst    netip.AddrPort // original addresses (pods or world), never the proxy's
	Protocol    resolved.Protocol
	SrcIdentity identity.NumericIdentity
	DstIdentity identity.NumericIdentity
}

// Stage is the L7 rule set of one endpoint and direction that redirected
// the flow.
type Stage struct {
	EndpointID uint32
	Direction  resolved.Direction
	// Rules is the union of the L7 rules of every matching Redirect entry
	// (rules of several policies merged, OR-ed). Never nil.
	Rules *resolved.L7Rules
	// Policies names ("namespace/name") the policies whose rules these are.
	Policies []string
}

// Policy is everything a proxy enforces on one flow.
type Policy struct {
	Stages []Stage
}

// PolicySource finds the Policy of a flow from the current policy state.
// ok is false when no L7 rule applies any more (the policy changed since
// the redirect): the proxy then refuses the flow.
type PolicySource interface {
	PolicyFor(f Flow) (p Policy, ok bool)
}

// Dialer opens the proxy's upstream connection to f.Dst as f's original
// source: the destination's ingress policy judges it with f.SrcIdentity,
// and the proxy's own packets are never redirected again.
type Dialer interface {
	DialUpstream(ctx context.Context, f Flow) (net.Conn, error)
}

// Verdict of one request.
type Verdict uint8

const (
	Forwarded   Verdict = iota + 1
	Dropped             // denied by an L7 rule (403, PERMISSION_DENIED, REFUSED)
	RateLimited         // over a rate limit (429)
	Error               // upstream unreachable, malformed request, ...
)

func (v Verdict) String() string {
	switch v {
	case Forwarded:
		return "FORWARDED"
	case Dropped:
		return "DROPPED"
	case RateLimited:
		return "DROPPED" // Hubble has no rate-limit verdict; Record.Reason says it
	case Error:
		return "ERROR"
	}
	return "VERDICT_UNKNOWN"
}

// RecordType is Hubble's L7 flow type.
type RecordType uint8

const (
	Request RecordType = iota + 1
	Response
)

// Header is one HTTP header as recorded (values of redacted headers are
// replaced before they reach a Record).
type Header struct{ Key, Value string }

// HTTP is the L7 part of an HTTP or gRPC record.
type HTTP struct {
	Method   string
	URL      string // scheme://host/path?query as Hubble shows it
	Protocol string // "HTTP/1.1", "HTTP/2"
	Code     int    // response status; 0 on a request record
	Headers  []Header
}

// DNS is the L7 part of a DNS record.
type DNS struct {
	Query  string // fully qualified, lower case, with the trailing dot
	QTypes []string
	RCode  int
	IPs    []netip.Addr
	TTL    uint32
}

// Record is one L7 event: a request or response, its verdict and the
// policies that decided it.
type Record struct {
	Time     time.Time
	Flow     Flow
	Type     RecordType
	Verdict  Verdict
	Reason   string   // human-readable why, e.g. "no HTTP rule matched"
	Policies []string // "namespace/name" of the deciding policies
	// Direction and EndpointID name the Stage that decided: the one that
	// denied, or for a forwarded request the last one (Policies then
	// lists the policies of every Stage).
	Direction  resolved.Direction
	EndpointID uint32
	Latency    time.Duration
	HTTP       *HTTP
	DNS        *DNS
}

// Recorder receives Records. It must not block (drop and count instead).
type Recorder func(Record)
