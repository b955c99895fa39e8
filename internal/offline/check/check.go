package check

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// Flow is one line of a flows file.
type Flow struct {
	Src      string `json:"src"`      // "NS/POD" or an IP literal
	Dst      string `json:"dst"`      // "NS/POD" or an IP literal
	Port     int    `json:"port"`     // destination port
	Protocol string `json:"protocol"` // TCP, UDP or SCTP (default TCP)
	// Expect is the verdict the flow should get ("allowed" or "denied"),
	// or "" for none.
	Expect string `json:"expect,omitempty"`
}

// Result is the verdict of a flow, in the output format of
// `bulwark policy check -o json`.
type Result struct {
	Src      string   `json:"src"`
	Dst      string   `json:"dst"`
	Port     int      `json:"port"`
	Protocol string   `json:"protocol"`
	Verdict  string   `json:"verdict"` // allowed | denied
	Egress   string   `json:"egress"`  // verdict of the source's egress policy
	Ingress  string   `json:"ingress"` // verdict of the destination's ingress policy
	Policies []string `json:"policies"`
	// Audit names the audit-mode policies that would have denied an
	// allowed flow (policy.bulwark.io/audit: "true"); empty otherwise.
	Audit  []string `json:"audit,omitempty"`
	Expect string   `json:"expect,omitempty"` // repeated from the flow

	// Details for trace and tests (not serialised).
	SrcPeer, DstPeer Peer               `json:"-"`
	EgressDecision   *resolved.Decision `json:"-"` // nil: no policy on that side
	IngressDecision  *resolved.Decision `json:"-"`
	Proxy            bool               `json:"-"` // L4 allowed; requests are judged by L7 rules (the proxy)
}

// Peer is one side of a flow.
type Peer struct {
	Endpoint *policy.Endpoint // nil outside the cluster
	Addr     netip.Addr       // set for IP literals
	Identity identity.NumericIdentity
}

func (p Peer) String() string {
	switch {
	case p.Endpoint != nil:
		return p.Endpoint.Key.String()
	case p.Addr.IsValid():
		return p.Addr.String()
	}
	return "identity " + p.Identity.String()
}

const (
	allowed = "allowed"
	denied  = "denied"
)

// ParseProtocol reads a flow protocol (case-insensitive; "" is TCP).
func ParseProtocol(s string) (resolved.Protocol, string, error) {
	switch strings.ToUpper(strings.TrimSpace(s)) {
	case "", "TCP":
		return resolved.ProtoTCP, "TCP", nil
	case "UDP":
		return resolved.ProtoUDP, "UDP", nil
	case "SCTP":
		return resolved.ProtoSCTP, "SCTP", nil
	}
	return 0, "", fmt.Errorf("protocol %q is not TCP, UDP or SCTP", s)
}

// Peer resolves "NS/POD" or an IP literal.
func (s *State) Peer(ref string) (Peer, error) {
	ref = strings.TrimSpace(ref)
	if a, err := netip.ParseAddr(ref); err == nil {
		a = a.Unmap()
		p := Peer{Addr: a, Identity: s.Snap.IPCache.Lookup(a)}
		if k, ok := s.Snap.IPCache.Endpoint(a); ok {
			p.Endpoint = s.Snap.Endpoints[k]
		}
		return p, nil
	}
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || name == "" {
		return Peer{}, fmt.Errorf("%q is neither NS/POD nor an IP address", ref)
	}
	ep, ok := s.Snap.Endpoints[policy.EndpointKey{Namespace: ns, Name: name}]
	if !ok {
		return Peer{}, fmt.Errorf("pod %s/%s is not in the state", ns, name)
	}
	return Peer{Endpoint: ep, Addr: ep.IP, Identity: ep.Identity}, nil
}

// Check decides one flow: the source's egress policy, then the
// destination's ingress policy; allowed only if both allow. A side outside
// the cluster has no policy (allowed). Traffic from a pod to itself never
// leaves the pod's network namespace, so no policy applies to it (as in
// Cilium): it is allowed.
func (s *State) Check(f Flow) (Result, error) {
	proto, protoName, err := ParseProtocol(f.Protocol)
	if err != nil {
		return Result{}, err
	}
	if f.Port < 1 || f.Port > 65535 {
		return Result{}, fmt.Errorf("port %d is out of range 1-65535", f.Port)
	}
	src, err := s.Peer(f.Src)
	if err != nil {
		return Result{}, fmt.Errorf("src: %w", err)
	}
	dst, err := s.Peer(f.Dst)
	if err != nil {
		return Result{}, fmt.Errorf("dst: %w", err)
	}
	return s.decidePeers(f, src, dst, proto, protoName), nil
}

// IdentityPeer resolves a numeric identity: the first endpoint (by
// namespace/name) that has it, or, for identities no endpoint has (world,
// CIDR and other reserved identities), a peer outside the cluster.
func (s *State) IdentityPeer(id identity.NumericIdentity) (Peer, error) {
	for _, k := range s.Snap.EndpointKeys() {
		if ep := s.Snap.Endpoints[k]; ep.Identity == id {
			return Peer{Endpoint: ep, Addr: ep.IP, Identity: id}, nil
		}
	}
	if _, ok := s.Snap.Labels(id); !ok {
		return Peer{}, fmt.Errorf("identity %d is not allocated", id)
	}
	return Peer{Identity: id}, nil
}

// CheckPeers decides a flow between resolved peers (see Check).
func (s *State) CheckPeers(src, dst Peer, port int, protocol string) (Result, error) {
	proto, protoName, err := ParseProtocol(protocol)
	if err != nil {
		return Result{}, err
	}
	if port < 1 || port > 65535 {
		return Result{}, fmt.Errorf("port %d is out of range 1-65535", port)
	}
	return s.decidePeers(Flow{Src: src.String(), Dst: dst.String(), Port: port, Protocol: protoName}, src, dst, proto, protoName), nil
}

func (s *State) decidePeers(f Flow, src, dst Peer, proto resolved.Protocol, protoName string) Result {
	res := Result{Src: f.Src, Dst: f.Dst, Port: f.Port, Protocol: protoName, Expect: f.Expect, SrcPeer: src, DstPeer: dst,
		Egress: allowed, Ingress: allowed, Verdict: allowed, Policies: []string{}}
	if src.Endpoint != nil && dst.Endpoint != nil && src.Endpoint.Key == dst.Endpoint.Key {
		return res
	}
	var refs, auditRefs []resolved.PolicyRef
	if src.Endpoint != nil {
		dp := &src.Endpoint.Policy.Egress
		d := dp.Lookup(s.Snap.Selectors, dst.Identity, proto, uint16(f.Port))
		res.EgressDecision = &d
		if d.Verdict == resolved.Deny {
			res.Egress = denied
		}
		if d.Verdict == resolved.Redirect {
			res.Proxy = true
		}
		auditRefs = append(auditRefs, d.AuditPolicies(dp)...)
		if d.Verdict != resolved.AuditDeny {
			refs = append(refs, d.Policies(dp)...)
		}
	}
	if dst.Endpoint != nil {
		dp := &dst.Endpoint.Policy.Ingress
		d := dp.Lookup(s.Snap.Selectors, src.Identity, proto, uint16(f.Port))
		res.IngressDecision = &d
		if d.Verdict == resolved.Deny {
			res.Ingress = denied
		}
		if d.Verdict == resolved.Redirect {
			res.Proxy = true
		}
		auditRefs = append(auditRefs, d.AuditPolicies(dp)...)
		if d.Verdict == resolved.AuditDeny {
			// named apart
		} else if res.Egress == denied && res.Ingress != denied {
			// Only the deciding side names policies.
		} else if res.Ingress == denied && res.Egress != denied {
			refs = refs[:0]
			refs = append(refs, d.Policies(dp)...)
		} else {
			refs = append(refs, d.Policies(dp)...)
		}
	}
	if res.Egress == denied || res.Ingress == denied {
		res.Verdict = denied
	} else {
		// An audit-mode deny passes the flow; it is named apart.
		seenAudit := map[string]bool{}
		for _, r := range auditRefs {
			if n := r.String(); !seenAudit[n] {
				seenAudit[n] = true
				res.Audit = append(res.Audit, n)
			}
		}
	}
	seen := map[string]bool{}
	for _, r := range refs {
		if n := r.String(); !seen[n] {
			seen[n] = true
			res.Policies = append(res.Policies, n)
		}
	}
	return res
}

// Unexpected reports whether a result contradicts its flow's "expect".
func (r Result) Unexpected() bool { return r.Expect != "" && r.Expect != r.Verdict }

// LineError is a bad line of a flows file.
type LineError struct {
	Line int
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("flows line %d: %v", e.Line, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }

// Run reads JSON-lines flows from r and calls emit with each result, in
// order. Blank lines and lines starting with '#' are skipped. Every line is
// decided before the first emit: a bad line stops the run with a
// *LineError and nothing is emitted.
func (s *State) Run(r io.Reader, emit func(Result) error) error {
	var results []Result
	if err := s.decide(r, func(res Result) { results = append(results, res) }); err != nil {
		return err
	}
	for _, res := range results {
		if err := emit(res); err != nil {
			return err
		}
	}
	return nil
}

func (s *State) decide(r io.Reader, collect func(Result)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 || b[0] == '#' {
			continue
		}
		f, err := parseFlow(b)
		if err != nil {
			return &LineError{line, err}
		}
		res, err := s.Check(f)
		if err != nil {
			return &LineError{line, err}
		}
		// Keep only what is printed: 100k flows stay small in memory.
		res.SrcPeer, res.DstPeer, res.EgressDecision, res.IngressDecision = Peer{}, Peer{}, nil, nil
		collect(res)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read flows: %w", err)
	}
	return nil
}

func parseFlow(b []byte) (Flow, error) {
	var raw struct {
		Src      *string          `json:"src"`
		Dst      *string          `json:"dst"`
		Port     *json.RawMessage `json:"port"`
		Protocol *string          `json:"protocol"`
		Expect   *string          `json:"expect"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return Flow{}, fmt.Errorf("not a JSON object: %v", err)
	}
	var f Flow
	switch {
	case raw.Src == nil:
		return f, fmt.Errorf(`missing "src"`)
	case raw.Dst == nil:
		return f, fmt.Errorf(`missing "dst"`)
	case raw.Port == nil:
		return f, fmt.Errorf(`missing "port"`)
	}
	f.Src, f.Dst = *raw.Src, *raw.Dst
	if raw.Protocol != nil {
		f.Protocol = *raw.Protocol
	}
	if raw.Expect != nil {
		if *raw.Expect != allowed && *raw.Expect != denied {
			return f, fmt.Errorf(`"expect" must be "allowed" or "denied", got %q`, *raw.Expect)
		}
		f.Expect = *raw.Expect
	}
	if err := json.Unmarshal(*raw.Port, &f.Port); err != nil {
		var s string
		if json.Unmarshal(*raw.Port, &s) == nil {
			if _, err := fmt.Sscanf(s, "%d", &f.Port); err == nil && fmt.Sprint(f.Port) == s {
				return f, nil
			}
		}
		return f, fmt.Errorf(`"port" must be an integer, got %s`, string(*raw.Port))
	}
	return f, nil
}
