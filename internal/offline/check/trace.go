package check

import (
	"fmt"
	"io"
	"strings"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// WriteTrace writes a human explanation of a checked flow.
func (s *State) WriteTrace(w io.Writer, res Result) error {
	b := &strings.Builder{}
	fmt.Fprintf(b, "Tracing %s -> %s on %s/%d\n\n", res.SrcPeer, res.DstPeer, res.Protocol, res.Port)
	s.describePeer(b, "Source", res.SrcPeer, resolved.Egress)
	s.describePeer(b, "Destination", res.DstPeer, resolved.Ingress)

	if res.SrcPeer.Endpoint != nil && res.DstPeer.Endpoint != nil && res.SrcPeer.Endpoint.Key == res.DstPeer.Endpoint.Key {
		fmt.Fprintf(b, "Traffic from a pod to itself stays in its network namespace: no policy applies.\n\n")
	} else {
		s.describeDecision(b, "Egress", res.SrcPeer, res.DstPeer, res.EgressDecision, resolved.Egress)
		s.describeDecision(b, "Ingress", res.DstPeer, res.SrcPeer, res.IngressDecision, resolved.Ingress)
	}
	fmt.Fprintf(b, "Final verdict: %s\n", strings.ToUpper(res.Verdict))
	if len(res.Audit) > 0 {
		fmt.Fprintf(b, "AUDIT: would be denied by %s (audit mode: the traffic passes and is flagged)\n", strings.Join(res.Audit, ", "))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func (s *State) identityText(p Peer) string {
	ls, _ := s.Snap.Labels(p.Identity)
	return fmt.Sprintf("%s (labels: %s)", p.Identity, strings.ReplaceAll(ls.String(), ",", ", "))
}

func (s *State) describePeer(b *strings.Builder, role string, p Peer, dir resolved.Direction) {
	fmt.Fprintf(b, "%s: %s\n", role, p)
	fmt.Fprintf(b, "  Identity: %s\n", s.identityText(p))
	if p.Endpoint == nil {
		fmt.Fprintf(b, "  Outside the cluster: no policy applies on this side.\n\n")
		return
	}
	for _, ip := range p.Endpoint.IPs {
		fmt.Fprintf(b, "  IP: %s\n", ip)
	}
	rules := s.Snap.Rules(p.Endpoint.Key)
	n := 0
	for _, r := range rules {
		sec := r.Sections[dir]
		if !sec.Present {
			continue
		}
		n++
		mode := "adds allows only (enableDefaultDeny: false)"
		if sec.DefaultDeny {
			mode = "default deny"
		}
		if r.Audit {
			mode += "; audit mode: its denies pass, flagged as AUDIT"
		}
		fmt.Fprintf(b, "  Selected for %s by %s %s %s (endpointSelector %s): %s\n", dir, r.Policy.Kind, r.Policy, r.Path, r.Subject, mode)
		for _, it := range sec.Items {
			ports := "all protocols and ports"
			if len(it.Ports) > 0 {
				ports = strings.Join(it.Ports, ", ")
			}
			peers := "nothing"
			if len(it.Peers) > 0 {
				peers = strings.Join(it.Peers, " or ")
			}
			fmt.Fprintf(b, "    %s: %s %s on %s\n", it.Path, it.Verdict, peers, ports)
		}
	}
	if n == 0 {
		fmt.Fprintf(b, "  No rule selects it for %s: %s is not restricted.\n", dir, dir)
	}
	b.WriteString("\n")
}

func (s *State) describeDecision(b *strings.Builder, what string, self, peer Peer, d *resolved.Decision, dir resolved.Direction) {
	if d == nil {
		fmt.Fprintf(b, "%s: ALLOWED (%s is outside the cluster)\n\n", what, self)
		return
	}
	dp := self.Endpoint.Policy.Dir(dir)
	verb := map[resolved.Direction]string{resolved.Egress: "to", resolved.Ingress: "from"}[dir]
	fmt.Fprintf(b, "%s of %s %s identity %s: ", what, self, verb, peer.Identity)
	switch {
	case d.Default && d.Verdict == resolved.Deny:
		fmt.Fprintf(b, "DENIED by default deny: no rule allows it; default deny set by %s\n", refList(d.Policies(dp)))
	case d.Default && d.Verdict == resolved.AuditDeny:
		fmt.Fprintf(b, "ALLOWED, AUDIT: would be denied by default deny of %s (audit mode)\n", refList(d.Policies(dp)))
	case d.Default:
		fmt.Fprintf(b, "ALLOWED (no policy selects %s for %s)\n", self, dir)
	default:
		v := map[resolved.Verdict]string{resolved.Allow: "ALLOWED", resolved.Deny: "DENIED (deny wins)", resolved.Redirect: "L4 ALLOWED, each request judged by the L7 rules below (the proxy enforces them; with no proxy running the connection is dropped)",
			resolved.AuditDeny: "ALLOWED, AUDIT: would be denied (audit mode)"}[d.Verdict]
		fmt.Fprintf(b, "%s by %s\n", v, refList(d.Policies(dp)))
		for _, e := range d.Matched {
			fmt.Fprintf(b, "    matched: %s %s %s from %s\n", e.Verdict, s.Snap.Selectors.Describe(e.Peer), portText(e), refList(e.Origin))
			if e.L7 != nil {
				for _, h := range e.L7.HTTP {
					fmt.Fprintf(b, "      http: method=%q path=%q host=%q headers=%q\n", h.Method, h.Path, h.Host, h.Headers)
				}
				for _, r := range e.L7.DNS {
					fmt.Fprintf(b, "      dns: matchName=%q matchPattern=%q\n", r.MatchName, r.MatchPattern)
				}
			}
		}
		if d.AllowAllL7 {
			b.WriteString("      (a plain allow also matches: every L7 request is allowed)\n")
		}
		if d.Verdict == resolved.Redirect && len(d.Audit) > 0 {
			fmt.Fprintf(b, "    AUDIT: would be denied by %s (audit mode; the L7 rules still apply)\n", refList(d.AuditPolicies(dp)))
		}
	}
	b.WriteString("\n")
}

func portText(e *resolved.Entry) string {
	if e.Proto == resolved.ProtoAny && e.PortLo == 0 {
		return "all protocols and ports"
	}
	if e.PortLo == 0 && e.PortHi == 0 {
		return e.Proto.String() + "/*"
	}
	if e.PortLo == e.PortHi {
		return fmt.Sprintf("%s/%d", e.Proto, e.PortLo)
	}
	return fmt.Sprintf("%s/%d-%d", e.Proto, e.PortLo, e.PortHi)
}

func refList(refs []resolved.PolicyRef) string {
	if len(refs) == 0 {
		return "(none)"
	}
	parts := make([]string, len(refs))
	for i, r := range refs {
		parts[i] = r.Kind + " " + r.String()
	}
	return strings.Join(parts, ", ")
}

// TraceQuery names the connection `policy trace` explains: each side a pod
// ("NS/POD") or an identity (the first pod with it; an identity no pod has
// is a peer outside the cluster).
type TraceQuery struct {
	Src, Dst                 string
	SrcIdentity, DstIdentity identity.NumericIdentity
	Port                     int
	Protocol                 string
}

// Trace decides the query's connection and writes its explanation.
func (s *State) Trace(w io.Writer, q TraceQuery) error {
	peer := func(ref string, id identity.NumericIdentity, what string) (Peer, error) {
		if ref != "" {
			return s.Peer(ref)
		}
		p, err := s.IdentityPeer(id)
		if err != nil {
			return p, fmt.Errorf("%s: %w", what, err)
		}
		return p, nil
	}
	src, err := peer(q.Src, q.SrcIdentity, "source identity")
	if err != nil {
		return err
	}
	dst, err := peer(q.Dst, q.DstIdentity, "destination identity")
	if err != nil {
		return err
	}
	res, err := s.CheckPeers(src, dst, q.Port, q.Protocol)
	if err != nil {
		return err
	}
	return s.WriteTrace(w, res)
}
