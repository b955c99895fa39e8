// Package dns is Bulwark's transparent DNS proxy. The datapath redirects a
// pod's DNS traffic (UDP and TCP port 53, to any server) here when a
// rules.dns entry covers it; the proxy checks the query name against the
// rules of every Stage of the flow's Policy, forwards allowed queries to
// the original server as the original source, and answers the others
// itself (REFUSED by default).
//
// Invariants:
//   - Fail closed: a flow without a Policy, a Stage without DNS rules, an
//     upstream failure or a failed Learn never releases an answer naming
//     addresses the datapath does not allow yet (SERVFAIL instead).
//   - Learn before release: the addresses of an allowed answer are handed
//     to Options.Learn, which returns only once the datapath allows them;
//     only then is the answer written to the pod, so its first connection
//     to a learned address works.
//   - Every query becomes a Request Record, every answer a Response Record.
package dns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/bulwark-net/bulwark/internal/fqdn/matchpattern"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/proxy"
)

// Answer is what an allowed response taught: the addresses a name resolved
// to, as the pod will see them.
type Answer struct {
	// Name is the query name (normalized: lower case, trailing dot).
	// Addresses reached through a CNAME chain are learned under it too.
	Name string
	IPs  []netip.Addr
	// TTL is the smallest TTL of the address records, in seconds.
	TTL uint32
}

// LearnFunc makes the addresses of an answer reachable for the endpoints
// (the egress Stages' EndpointIDs) before the answer is released. It must
// return only once the datapath enforces them; an error makes the proxy
// answer SERVFAIL (fail closed).
type LearnFunc func(ctx context.Context, f proxy.Flow, endpoints []uint32, a Answer) error

// Upstream sends a query to the flow's original server as the flow's
// original source and returns the server's answer.
type Upstream interface {
	Exchange(ctx context.Context, f proxy.Flow, q *dns.Msg) (*dns.Msg, error)
}

// Options configure a Proxy.
type Options struct {
	Policies proxy.PolicySource // required
	Upstream Upstream           // required
	// Learn is called for every allowed answer with addresses; nil learns
	// nothing (toFQDNs then never selects those addresses).
	Learn LearnFunc
	// Record receives a Record for every query and answer; nil drops them.
	Record proxy.Recorder
	// DeniedRcode answers denied queries: dns.RcodeRefused (the default,
	// as Cilium) or dns.RcodeNameError (NXDOMAIN).
	DeniedRcode int
	// Timeout bounds one query: upstream exchange plus Learn (default 5s).
	Timeout time.Duration
	// Metrics, when set, counts requests and latencies.
	Metrics *Metrics
}

// Proxy answers redirected DNS queries. Safe for concurrent use.
type Proxy struct {
	opts Options

	mu       sync.Mutex
	matchers map[*resolved.L7Rules]*matchpattern.Matcher // compiled per rule set (rule sets are immutable)
}

// New returns a Proxy.
func New(opts Options) (*Proxy, error) {
	if opts.Policies == nil || opts.Upstream == nil {
		return nil, errors.New("dns proxy: Policies and Upstream are required")
	}
	switch opts.DeniedRcode {
	case 0:
		opts.DeniedRcode = dns.RcodeRefused
	case dns.RcodeRefused, dns.RcodeNameError:
	default:
		return nil, fmt.Errorf("dns proxy: denied rcode %s: only REFUSED or NXDOMAIN", dns.RcodeToString[opts.DeniedRcode])
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	return &Proxy{opts: opts, matchers: map[*resolved.L7Rules]*matchpattern.Matcher{}}, nil
}

// decision of one query.
type decision struct {
	allowed  bool
	stage    proxy.Stage // the one that denied, else the last one
	reason   string
	policies []string
	learners []uint32 // egress endpoints that learn the answer
}

// matcher compiles (once per rule set) the DNS rules of a Stage.
func (p *Proxy) matcher(rules *resolved.L7Rules) (*matchpattern.Matcher, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if m, ok := p.matchers[rules]; ok {
		return m, nil
	}
	var names, patterns []string
	for _, r := range rules.DNS {
		if r.MatchName != "" {
			names = append(names, r.MatchName)
		}
		if r.MatchPattern != "" {
			patterns = append(patterns, r.MatchPattern)
		}
	}
	m, err := matchpattern.Compile(names, patterns)
	if err != nil {
		return nil, err
	}
	if len(p.matchers) > 4096 {
		clear(p.matchers) // rule sets of old policy revisions; recompiled on demand
	}
	p.matchers[rules] = m
	return m, nil
}

// decide checks a query name against every Stage: all must allow.
func (p *Proxy) decide(f proxy.Flow, name string) decision {
	pol, ok := p.opts.Policies.PolicyFor(f)
	if !ok || len(pol.Stages) == 0 {
		return decision{reason: "no DNS policy applies to this flow any more"}
	}
	var d decision
	for _, st := range pol.Stages {
		d.stage = st
		d.policies = append(d.policies, st.Policies...)
		if st.Rules == nil || len(st.Rules.DNS) == 0 {
			d.reason = fmt.Sprintf("endpoint %d %s: no DNS rule on this port", st.EndpointID, st.Direction)
			return d
		}
		m, err := p.matcher(st.Rules)
		if err != nil {
			d.reason = fmt.Sprintf("endpoint %d %s: %v", st.EndpointID, st.Direction, err)
			return d
		}
		if !m.Match(name) {
			d.reason = fmt.Sprintf("no DNS rule of endpoint %d %s matches %s", st.EndpointID, st.Direction, name)
			return d
		}
		if st.Direction == resolved.Egress {
			d.learners = append(d.learners, st.EndpointID)
		}
	}
	d.allowed = true
	return d
}

// Handle answers one query of flow f. It never returns nil for a query
// that parsed: denied and failed queries get an answer built here.
func (p *Proxy) Handle(ctx context.Context, f proxy.Flow, q *dns.Msg) *dns.Msg {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	rec := proxy.Record{Time: start, Flow: f, Type: proxy.Request}
	if q.Response || q.Opcode != dns.OpcodeQuery || len(q.Question) != 1 {
		rec.Verdict, rec.Reason = proxy.Error, "not a single-question query"
		rec.DNS = &proxy.DNS{}
		p.record(rec)
		p.opts.Metrics.request("error", time.Since(start), 0)
		return reply(q, dns.RcodeFormatError)
	}
	name := matchpattern.Normalize(q.Question[0].Name)
	qtypes := []string{dns.TypeToString[q.Question[0].Qtype]}
	rec.DNS = &proxy.DNS{Query: name, QTypes: qtypes}
	d := p.decide(f, name)
	rec.Policies, rec.Direction, rec.EndpointID = d.policies, d.stage.Direction, d.stage.EndpointID
	if !d.allowed {
		rec.Verdict, rec.Reason = proxy.Dropped, d.reason
		rec.DNS.RCode = p.opts.DeniedRcode
		p.record(rec)
		p.opts.Metrics.request("denied", time.Since(start), 0)
		return reply(q, p.opts.DeniedRcode)
	}
	rec.Verdict = proxy.Forwarded
	p.record(rec)

	resp := proxy.Record{Flow: f, Type: proxy.Response, Policies: d.policies, Direction: d.stage.Direction, EndpointID: d.stage.EndpointID,
		DNS: &proxy.DNS{Query: name, QTypes: qtypes}}
	upStart := time.Now()
	ans, err := p.opts.Upstream.Exchange(ctx, f, q)
	upstream := time.Since(upStart)
	if err != nil {
		resp.Time, resp.Latency = time.Now(), time.Since(start)
		resp.Verdict, resp.Reason = proxy.Error, "upstream: "+err.Error()
		resp.DNS.RCode = dns.RcodeServerFailure
		p.record(resp)
		p.opts.Metrics.request("error", time.Since(start), 0)
		return reply(q, dns.RcodeServerFailure)
	}
	a := answerOf(name, ans)
	var learn time.Duration
	if len(a.IPs) > 0 && p.opts.Learn != nil && len(d.learners) > 0 {
		ls := time.Now()
		err := p.opts.Learn(ctx, f, d.learners, a)
		learn = time.Since(ls)
		if err != nil {
			// Fail closed: the pod would connect to addresses the
			// datapath does not allow; it retries instead.
			resp.Time, resp.Latency = time.Now(), time.Since(start)
			resp.Verdict, resp.Reason = proxy.Error, "learn addresses: "+err.Error()
			resp.DNS.RCode = dns.RcodeServerFailure
			p.record(resp)
			p.opts.Metrics.request("error", time.Since(start), learn)
			return reply(q, dns.RcodeServerFailure)
		}
	}
	resp.Time, resp.Latency = time.Now(), time.Since(start)
	resp.Verdict = proxy.Forwarded
	resp.DNS.RCode, resp.DNS.IPs, resp.DNS.TTL = ans.Rcode, a.IPs, a.TTL
	p.record(resp)
	p.opts.Metrics.request("forwarded", time.Since(start), learn)
	p.opts.Metrics.upstream(upstream)
	ans.Id = q.Id
	return ans
}

func (p *Proxy) record(r proxy.Record) {
	if p.opts.Record != nil {
		if r.Time.IsZero() {
			r.Time = time.Now()
		}
		p.opts.Record(r)
	}
}

// reply is an answer to q with rcode and no records.
func reply(q *dns.Msg, rcode int) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcode(q, rcode)
	m.RecursionAvailable = true
	return m
}

// answerOf collects the addresses of an answer: every A and AAAA record
// of the answer section (a CNAME chain ends at the query name's
// addresses), with the smallest TTL among them.
func answerOf(name string, m *dns.Msg) Answer {
	a := Answer{Name: name}
	if m.Rcode != dns.RcodeSuccess {
		return a
	}
	first := true
	seen := map[netip.Addr]bool{}
	for _, rr := range m.Answer {
		var ip netip.Addr
		switch r := rr.(type) {
		case *dns.A:
			ip, _ = netip.AddrFromSlice(r.A.To4())
		case *dns.AAAA:
			ip, _ = netip.AddrFromSlice(r.AAAA.To16())
		default:
			continue
		}
		if !ip.IsValid() || seen[ip.Unmap()] {
			continue
		}
		ip = ip.Unmap()
		seen[ip] = true
		a.IPs = append(a.IPs, ip)
		if ttl := rr.Header().Ttl; first || ttl < a.TTL {
			a.TTL, first = ttl, false
		}
	}
	return a
}
