// Package printer renders Hubble GetFlows responses for `bulwark observe`:
// compact lines, an aligned table, JSON (one GetFlowsResponse per line, as
// hubble's json/jsonpb) or dict blocks. Every output format goes through
// Printer so flag handling stays in one place.
package printer

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/observer"
)

// Format is an output format.
type Format string

const (
	Compact Format = "compact"
	Table   Format = "table"
	JSON    Format = "json"
	JSONPB  Format = "jsonpb"
	Dict    Format = "dict"
)

// Formats lists the valid formats, for flag help and validation.
var Formats = []Format{Compact, Table, JSON, JSONPB, Dict}

// ParseFormat validates a format name.
func ParseFormat(s string) (Format, error) {
	for _, f := range Formats {
		if string(f) == s {
			return f, nil
		}
	}
	names := make([]string, len(Formats))
	for i, f := range Formats {
		names[i] = string(f)
	}
	return "", fmt.Errorf("invalid output format %q: want one of %s", s, strings.Join(names, ", "))
}

// Options configure a Printer.
type Options struct {
	Format Format
	// PolicyNames adds the policies that allowed or denied each flow.
	PolicyNames bool
	// Flush after every response (when following a stream).
	Flush bool
	// Time zone of timestamps; nil means local time.
	Location *time.Location
}

// Printer writes responses in one format.
type Printer struct {
	opts    Options
	out     io.Writer
	errOut  io.Writer
	tw      *tabwriter.Writer
	header  bool
	written int
}

// New returns a printer writing flows to out and lost-event notices to
// errOut (for the line formats).
func New(out, errOut io.Writer, opts Options) *Printer {
	if opts.Location == nil {
		opts.Location = time.Local
	}
	p := &Printer{opts: opts, out: out, errOut: errOut}
	if opts.Format == Table {
		p.tw = tabwriter.NewWriter(out, 2, 0, 3, ' ', 0)
	}
	return p
}

// Write prints one response.
func (p *Printer) Write(resp *observerpb.GetFlowsResponse) error {
	var err error
	switch p.opts.Format {
	case JSON, JSONPB:
		var b []byte
		b, err = protojson.MarshalOptions{UseProtoNames: false}.Marshal(resp)
		if err == nil {
			_, err = fmt.Fprintf(p.out, "%s\n", b)
		}
	default:
		if lost := resp.GetLostEvents(); lost != nil {
			_, err = fmt.Fprintf(p.errOut, "EVENTS LOST: %s %d\n", lost.GetSource(), lost.GetNumEventsLost())
			break
		}
		f := resp.GetFlow()
		if f == nil {
			return nil
		}
		switch p.opts.Format {
		case Table:
			err = p.writeTableRow(f)
		case Dict:
			err = p.writeDict(f)
		default:
			_, err = fmt.Fprintln(p.out, p.compactLine(f))
		}
	}
	if err != nil {
		return fmt.Errorf("print flow: %w", err)
	}
	p.written++
	if p.opts.Flush {
		return p.Flush()
	}
	return nil
}

// Flush writes buffered table rows.
func (p *Printer) Flush() error {
	if p.tw != nil {
		return p.tw.Flush()
	}
	return nil
}

func (p *Printer) timestamp(f *flowpb.Flow) string {
	return f.GetTime().AsTime().In(p.opts.Location).Format(time.StampMilli)
}

func (p *Printer) compactLine(f *flowpb.Flow) string {
	var b strings.Builder
	b.WriteString(p.timestamp(f))
	b.WriteString(": ")
	// As hubble: a reply is shown from the requester's side, with the
	// arrow flipped.
	left, right, arrow := true, false, "-> "
	if f.GetIsReply().GetValue() {
		left, right, arrow = false, true, "<- "
	}
	side := func(source bool) *flowpb.Endpoint {
		if source {
			return f.GetSource()
		}
		return f.GetDestination()
	}
	b.WriteString(Endpoint(f, left))
	b.WriteString(" (")
	b.WriteString(identityText(side(left)))
	b.WriteString(") ")
	b.WriteString(arrow)
	b.WriteString(Endpoint(f, right))
	b.WriteString(" (")
	b.WriteString(identityText(side(right)))
	b.WriteString(") ")
	b.WriteString(EventDescription(f))
	b.WriteString(" ")
	b.WriteString(f.GetVerdict().String())
	if s := Summary(f); s != "" {
		b.WriteString(" (")
		b.WriteString(s)
		b.WriteString(")")
	}
	if p.opts.PolicyNames {
		if s := PolicyNames(f); s != "" {
			b.WriteString(" ")
			b.WriteString(s)
		}
	}
	return b.String()
}

func (p *Printer) writeTableRow(f *flowpb.Flow) error {
	if !p.header {
		p.header = true
		cols := "TIMESTAMP\tSOURCE\tDESTINATION\tTYPE\tVERDICT\tSUMMARY"
		if p.opts.PolicyNames {
			cols += "\tPOLICIES"
		}
		if _, err := fmt.Fprintln(p.tw, cols); err != nil {
			return err
		}
	}
	row := strings.Join([]string{p.timestamp(f), Endpoint(f, true), Endpoint(f, false),
		EventDescription(f), f.GetVerdict().String(), Summary(f)}, "\t")
	if p.opts.PolicyNames {
		row += "\t" + PolicyNames(f)
	}
	_, err := fmt.Fprintln(p.tw, row)
	return err
}

func (p *Printer) writeDict(f *flowpb.Flow) error {
	if p.written > 0 {
		if _, err := fmt.Fprintln(p.out, "------------"); err != nil {
			return err
		}
	}
	fields := [][2]string{
		{"TIMESTAMP", p.timestamp(f)},
		{"SOURCE", Endpoint(f, true)},
		{"DESTINATION", Endpoint(f, false)},
		{"TYPE", EventDescription(f)},
		{"VERDICT", f.GetVerdict().String()},
		{"SUMMARY", Summary(f)},
	}
	if p.opts.PolicyNames {
		fields = append(fields, [2]string{"POLICIES", PolicyNames(f)})
	}
	for _, kv := range fields {
		if _, err := fmt.Fprintf(p.out, "%12s: %s\n", kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}

// Endpoint renders one side of a flow: "namespace/pod:port" for pods,
// "ip:port" otherwise.
func Endpoint(f *flowpb.Flow, source bool) string {
	ep, ip := f.GetDestination(), f.GetIP().GetDestination()
	if source {
		ep, ip = f.GetSource(), f.GetIP().GetSource()
	}
	name := ip
	if ep.GetPodName() != "" {
		name = ep.GetNamespace() + "/" + ep.GetPodName()
	}
	if name == "" {
		name = "N/A"
	}
	sp, dp, ok := ports(f)
	if !ok {
		return name
	}
	port := dp
	if source {
		port = sp
	}
	if strings.Contains(name, ":") && ep.GetPodName() == "" { // IPv6 literal
		name = "[" + name + "]"
	}
	return name + ":" + strconv.FormatUint(uint64(port), 10)
}

func ports(f *flowpb.Flow) (uint32, uint32, bool) {
	l4 := f.GetL4()
	switch {
	case l4.GetTCP() != nil:
		return l4.GetTCP().GetSourcePort(), l4.GetTCP().GetDestinationPort(), true
	case l4.GetUDP() != nil:
		return l4.GetUDP().GetSourcePort(), l4.GetUDP().GetDestinationPort(), true
	case l4.GetSCTP() != nil:
		return l4.GetSCTP().GetSourcePort(), l4.GetSCTP().GetDestinationPort(), true
	}
	return 0, 0, false
}

func identityText(ep *flowpb.Endpoint) string {
	for _, l := range ep.GetLabels() {
		if name, ok := strings.CutPrefix(l, "reserved:"); ok {
			return name
		}
	}
	return "ID:" + strconv.FormatUint(uint64(ep.GetIdentity()), 10)
}

// EventDescription names what happened: the drop reason of a drop,
// "policy-verdict:L3-L4 INGRESS ALLOWED" for a verdict, the observation point of a
// trace.
func EventDescription(f *flowpb.Flow) string {
	switch f.GetEventType().GetType() {
	case observer.MonitorTypeDrop:
		return observer.CiliumDropReasonText(f.GetDropReasonDesc())
	case observer.MonitorTypePolicyVerdict:
		action := "ALLOWED"
		switch f.GetVerdict() {
		case flowpb.Verdict_DROPPED:
			action = "DENIED"
		case flowpb.Verdict_AUDIT:
			action = "AUDITED"
		case flowpb.Verdict_REDIRECTED:
			action = "REDIRECTED"
		}
		return "policy-verdict:" + MatchTypeText(f.GetPolicyMatchType()) + " " + f.GetTrafficDirection().String() + " " + action
	case observer.MonitorTypeAccessLog:
		kind := "l7"
		switch {
		case f.GetL7().GetHttp() != nil:
			kind = "http"
		case f.GetL7().GetDns() != nil:
			kind = "dns"
		}
		typ := "-request"
		if f.GetL7().GetType() == flowpb.L7FlowType_RESPONSE {
			typ = "-response"
		}
		if src := f.GetL7().GetDns().GetObservationSource(); src != "" {
			typ += " " + src // as hubble: "dns-request proxy"
		}
		return kind + typ
	case observer.MonitorTypeTrace:
		switch f.GetTraceObservationPoint() {
		case flowpb.TraceObservationPoint_FROM_ENDPOINT:
			return "from-endpoint"
		case flowpb.TraceObservationPoint_TO_STACK:
			return "to-stack"
		case flowpb.TraceObservationPoint_TO_PROXY:
			return "to-proxy"
		}
		return "to-endpoint"
	}
	return "unknown"
}

// MatchTypeText names a flow's policy_match_type as hubble does ("L3-L4",
// "L3-Only", "L4-Only", "all", "none", ...).
func MatchTypeText(v uint32) string {
	if v > 0xff {
		return "unknown"
	}
	return event.MatchType(v).String()
}

// PolicyNames renders the policies behind a verdict: "[allowed by ns/a,
// ns/b]" or "[denied by c]"; empty when there are none.
func PolicyNames(f *flowpb.Flow) string {
	var parts []string
	for _, g := range []struct {
		word string
		ps   []*flowpb.Policy
	}{
		{"allowed by", append(append([]*flowpb.Policy(nil), f.GetIngressAllowedBy()...), f.GetEgressAllowedBy()...)},
		{"denied by", append(append([]*flowpb.Policy(nil), f.GetIngressDeniedBy()...), f.GetEgressDeniedBy()...)},
	} {
		if len(g.ps) == 0 {
			continue
		}
		names := make([]string, len(g.ps))
		for i, p := range g.ps {
			names[i] = p.GetName()
			if p.GetNamespace() != "" {
				names[i] = p.GetNamespace() + "/" + p.GetName()
			}
		}
		parts = append(parts, "["+g.word+" "+strings.Join(names, ", ")+"]")
	}
	return strings.Join(parts, " ")
}

// Summary is a flow's one-line description; for L7 flows it is hubble's:
// "HTTP/1.1 GET http://backend:8080/api" for a request, "HTTP/1.1 200
// 3ms (GET http://backend:8080/api)" for a response, "DNS Query
// api.github.com. A" and "DNS Answer "1.2.3.4" TTL: 60 (Proxy
// api.github.com. A)" for DNS.
func Summary(f *flowpb.Flow) string {
	if s := f.GetSummary(); s != "" {
		return s // the server's, as the stock hubble CLI prints it
	}
	l7 := f.GetL7()
	resp := l7.GetType() == flowpb.L7FlowType_RESPONSE
	if h := l7.GetHttp(); h != nil {
		if resp {
			return fmt.Sprintf("%s %d %dms (%s %s)", h.GetProtocol(), h.GetCode(), l7.GetLatencyNs()/1e6, h.GetMethod(), h.GetUrl())
		}
		return fmt.Sprintf("%s %s %s", h.GetProtocol(), h.GetMethod(), h.GetUrl())
	}
	if d := l7.GetDns(); d != nil {
		qtypes := strings.Join(d.GetQtypes(), ",")
		if resp {
			return fmt.Sprintf("DNS Answer %q TTL: %d (Proxy %s %s)", strings.Join(d.GetIps(), ","), d.GetTtl(), d.GetQuery(), qtypes)
		}
		return fmt.Sprintf("DNS Query %s %s", d.GetQuery(), qtypes)
	}
	return f.GetSummary()
}
