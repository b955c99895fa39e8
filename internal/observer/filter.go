package observer

import (
	"fmt"
	"net/netip"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	k8slabels "k8s.io/apimachinery/pkg/labels"
)

// Filter decides whether a flow is shown: it matches when any include
// (whitelist) filter matches, or there is none, and no exclude (blacklist)
// filter matches. Within one FlowFilter every set field must match; within a
// field any value may.
type Filter struct {
	include, exclude []flowMatcher
}

type flowMatcher []func(*flowpb.Flow) bool

func (m flowMatcher) match(f *flowpb.Flow) bool {
	for _, fn := range m {
		if !fn(f) {
			return false
		}
	}
	return true
}

// NewFilter compiles Hubble's whitelist and blacklist. Fields Bulwark's flows
// never carry and that cannot be answered faithfully are rejected with an
// error naming the field.
func NewFilter(whitelist, blacklist []*flowpb.FlowFilter) (*Filter, error) {
	f := &Filter{}
	for i, ff := range whitelist {
		m, err := compileFlowFilter(ff)
		if err != nil {
			return nil, fmt.Errorf("whitelist filter %d: %w", i, err)
		}
		f.include = append(f.include, m)
	}
	for i, ff := range blacklist {
		m, err := compileFlowFilter(ff)
		if err != nil {
			return nil, fmt.Errorf("blacklist filter %d: %w", i, err)
		}
		f.exclude = append(f.exclude, m)
	}
	return f, nil
}

// Match reports whether the flow passes the filter.
func (f *Filter) Match(fl *flowpb.Flow) bool {
	if len(f.include) > 0 {
		ok := false
		for _, m := range f.include {
			if m.match(fl) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	for _, m := range f.exclude {
		if m.match(fl) {
			return false
		}
	}
	return true
}

func compileFlowFilter(ff *flowpb.FlowFilter) (flowMatcher, error) {
	var m flowMatcher
	if ff == nil {
		return m, nil
	}
	unsupported := map[string]bool{
		"source_ip_xlated": len(ff.GetSourceIpXlated()) > 0,
		"source_fqdn":      len(ff.GetSourceFqdn()) > 0, "destination_fqdn": len(ff.GetDestinationFqdn()) > 0,
		"source_service": len(ff.GetSourceService()) > 0, "destination_service": len(ff.GetDestinationService()) > 0,
		"source_workload": len(ff.GetSourceWorkload()) > 0, "destination_workload": len(ff.GetDestinationWorkload()) > 0,
		"source_cluster_name": len(ff.GetSourceClusterName()) > 0, "destination_cluster_name": len(ff.GetDestinationClusterName()) > 0,
		"interface": len(ff.GetInterface()) > 0, "node_labels": len(ff.GetNodeLabels()) > 0,
		"trace_id": len(ff.GetTraceId()) > 0, "ip_trace_id": len(ff.GetIpTraceId()) > 0,
		"encrypted": len(ff.GetEncrypted()) > 0, "experimental.cel_expression": len(ff.GetExperimental().GetCelExpression()) > 0,
	}
	if names := sortedTrue(unsupported); len(names) > 0 {
		return nil, fmt.Errorf("field %s: not supported by bulwark's observer", names[0])
	}

	add := func(fn func(*flowpb.Flow) bool, err error) error {
		if err != nil {
			return err
		}
		if fn != nil {
			m = append(m, fn)
		}
		return nil
	}
	src := func(f *flowpb.Flow) *flowpb.Endpoint { return f.GetSource() }
	dst := func(f *flowpb.Flow) *flowpb.Endpoint { return f.GetDestination() }
	srcIP := func(f *flowpb.Flow) string { return f.GetIP().GetSource() }
	dstIP := func(f *flowpb.Flow) string { return f.GetIP().GetDestination() }
	for _, err := range []error{
		add(ipFilter("source_ip", ff.GetSourceIp(), srcIP)),
		add(ipFilter("destination_ip", ff.GetDestinationIp(), dstIP)),
		add(podFilter("source_pod", ff.GetSourcePod(), src)),
		add(podFilter("destination_pod", ff.GetDestinationPod(), dst)),
		add(labelFilter("source_label", ff.GetSourceLabel(), src)),
		add(labelFilter("destination_label", ff.GetDestinationLabel(), dst)),
		add(identityFilter(ff.GetSourceIdentity(), src)),
		add(identityFilter(ff.GetDestinationIdentity(), dst)),
		add(portFilter("source_port", ff.GetSourcePort(), true)),
		add(portFilter("destination_port", ff.GetDestinationPort(), false)),
		add(protocolFilter(ff.GetProtocol())),
		add(nodeNameFilter(ff.GetNodeName())),
		add(httpStatusFilter(ff.GetHttpStatusCode())),
		add(httpMethodFilter(ff.GetHttpMethod())),
		add(httpRegexFilter("http_path", ff.GetHttpPath(), httpURLPath)),
		add(httpRegexFilter("http_url", ff.GetHttpUrl(), func(h *flowpb.HTTP) string { return h.GetUrl() })),
		add(httpHeaderFilter(ff.GetHttpHeader())),
		add(dnsQueryFilter(ff.GetDnsQuery())),
	} {
		if err != nil {
			return nil, err
		}
	}
	if v := ff.GetUuid(); len(v) > 0 {
		m = append(m, func(f *flowpb.Flow) bool { return slices.Contains(v, f.GetUuid()) })
	}
	if v := ff.GetVerdict(); len(v) > 0 {
		m = append(m, func(f *flowpb.Flow) bool { return slices.Contains(v, f.GetVerdict()) })
	}
	if v := ff.GetTrafficDirection(); len(v) > 0 {
		m = append(m, func(f *flowpb.Flow) bool { return slices.Contains(v, f.GetTrafficDirection()) })
	}
	if v := ff.GetDropReasonDesc(); len(v) > 0 {
		m = append(m, func(f *flowpb.Flow) bool { return slices.Contains(v, f.GetDropReasonDesc()) })
	}
	if v := ff.GetIpVersion(); len(v) > 0 {
		m = append(m, func(f *flowpb.Flow) bool { return f.GetIP() != nil && slices.Contains(v, f.GetIP().GetIpVersion()) })
	}
	if v := ff.GetReply(); len(v) > 0 {
		m = append(m, func(f *flowpb.Flow) bool {
			return f.GetIsReply() != nil && slices.Contains(v, f.GetIsReply().GetValue())
		})
	}
	if v := ff.GetEventType(); len(v) > 0 {
		m = append(m, func(f *flowpb.Flow) bool {
			et := f.GetEventType()
			if et == nil {
				return false
			}
			return slices.ContainsFunc(v, func(want *flowpb.EventTypeFilter) bool {
				return want.GetType() == et.GetType() && (!want.GetMatchSubType() || want.GetSubType() == et.GetSubType())
			})
		})
	}
	if v := ff.GetTcpFlags(); len(v) > 0 {
		m = append(m, func(f *flowpb.Flow) bool {
			have := f.GetL4().GetTCP().GetFlags()
			if have == nil {
				return false
			}
			return slices.ContainsFunc(v, func(want *flowpb.TCPFlags) bool { return tcpFlagsCover(have, want) })
		})
	}
	return m, nil
}

func sortedTrue(set map[string]bool) []string {
	var out []string
	for k, v := range set {
		if v {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

func tcpFlagsCover(have, want *flowpb.TCPFlags) bool {
	return (!want.FIN || have.FIN) && (!want.SYN || have.SYN) && (!want.RST || have.RST) &&
		(!want.PSH || have.PSH) && (!want.ACK || have.ACK) && (!want.URG || have.URG) &&
		(!want.ECE || have.ECE) && (!want.CWR || have.CWR) && (!want.NS || have.NS)
}

// ipFilter matches an address equal to one of the IPs or inside one of the
// CIDR prefixes.
func ipFilter(field string, values []string, get func(*flowpb.Flow) string) (func(*flowpb.Flow) bool, error) {
	if len(values) == 0 {
		return nil, nil
	}
	var prefixes []netip.Prefix
	for _, v := range values {
		if strings.Contains(v, "/") {
			p, err := netip.ParsePrefix(v)
			if err != nil {
				return nil, fmt.Errorf("field %s: %q: %w", field, v, err)
			}
			prefixes = append(prefixes, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(v)
		if err != nil {
			return nil, fmt.Errorf("field %s: %q: %w", field, v, err)
		}
		prefixes = append(prefixes, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return func(f *flowpb.Flow) bool {
		a, err := netip.ParseAddr(get(f))
		if err != nil {
			return false
		}
		a = a.Unmap()
		return slices.ContainsFunc(prefixes, func(p netip.Prefix) bool { return p.Contains(a) })
	}, nil
}

// podFilter matches "namespace/pod-prefix" (either part may be empty; a
// value without "/" is a pod prefix in any namespace).
func podFilter(field string, values []string, get func(*flowpb.Flow) *flowpb.Endpoint) (func(*flowpb.Flow) bool, error) {
	if len(values) == 0 {
		return nil, nil
	}
	type nsPod struct{ ns, prefix string }
	var want []nsPod
	for _, v := range values {
		if v == "" {
			return nil, fmt.Errorf("field %s: empty pod name", field)
		}
		ns, pod, found := strings.Cut(v, "/")
		if !found {
			ns, pod = "", v
		}
		want = append(want, nsPod{ns, pod})
	}
	return func(f *flowpb.Flow) bool {
		ep := get(f)
		if ep.GetNamespace() == "" && ep.GetPodName() == "" {
			return false
		}
		return slices.ContainsFunc(want, func(w nsPod) bool {
			return (w.ns == "" || w.ns == ep.GetNamespace()) && strings.HasPrefix(ep.GetPodName(), w.prefix)
		})
	}, nil
}

// labelSource matches "source:" label prefixes in a selector, to rewrite
// them into keys the Kubernetes selector parser accepts.
var labelSource = regexp.MustCompile(`(^|[\s,!(])([A-Za-z0-9_-]+):`)

// labelFilter matches Kubernetes label selectors against an endpoint's
// Cilium labels: "app=x" matches "k8s:app=x" (any source), "k8s:app=x"
// only the k8s source.
func labelFilter(field string, values []string, get func(*flowpb.Flow) *flowpb.Endpoint) (func(*flowpb.Flow) bool, error) {
	if len(values) == 0 {
		return nil, nil
	}
	var sels []k8slabels.Selector
	for _, v := range values {
		rewritten := labelSource.ReplaceAllStringFunc(v, func(s string) string {
			lead, src := "", s
			if s[0] == ' ' || s[0] == ',' || s[0] == '!' || s[0] == '(' || s[0] == '\t' {
				lead, src = s[:1], s[1:]
			}
			src = strings.TrimSuffix(src, ":")
			if src == "any" {
				return lead
			}
			return lead + src + "."
		})
		sel, err := k8slabels.Parse(rewritten)
		if err != nil {
			return nil, fmt.Errorf("field %s: selector %q: %w", field, v, err)
		}
		sels = append(sels, sel)
	}
	return func(f *flowpb.Flow) bool {
		set := labelSet(get(f).GetLabels())
		return slices.ContainsFunc(sels, func(s k8slabels.Selector) bool { return s.Matches(set) })
	}, nil
}

// labelSet indexes "source:key=value" labels under "key" and "source.key".
func labelSet(labels []string) k8slabels.Set {
	set := make(k8slabels.Set, 2*len(labels))
	for _, l := range labels {
		kv, val, _ := strings.Cut(l, "=")
		src, key, found := strings.Cut(kv, ":")
		if !found {
			src, key = "", kv
		}
		set[key] = val
		if src != "" {
			set[src+"."+key] = val
		}
	}
	return set
}

func identityFilter(values []uint32, get func(*flowpb.Flow) *flowpb.Endpoint) (func(*flowpb.Flow) bool, error) {
	if len(values) == 0 {
		return nil, nil
	}
	return func(f *flowpb.Flow) bool {
		ep := get(f)
		return ep != nil && slices.Contains(values, ep.GetIdentity())
	}, nil
}

func portFilter(field string, values []string, source bool) (func(*flowpb.Flow) bool, error) {
	if len(values) == 0 {
		return nil, nil
	}
	var ports []uint32
	for _, v := range values {
		p, err := strconv.ParseUint(v, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("field %s: port %q: not a number 0-65535", field, v)
		}
		ports = append(ports, uint32(p))
	}
	return func(f *flowpb.Flow) bool {
		sp, dp, ok := flowPorts(f)
		if !ok {
			return false
		}
		if source {
			return slices.Contains(ports, sp)
		}
		return slices.Contains(ports, dp)
	}, nil
}

func flowPorts(f *flowpb.Flow) (src, dst uint32, ok bool) {
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

// ProtocolName is the lower-case L4 protocol of a flow ("tcp", "icmpv4").
func ProtocolName(f *flowpb.Flow) string {
	l4 := f.GetL4()
	switch {
	case l4.GetTCP() != nil:
		return "tcp"
	case l4.GetUDP() != nil:
		return "udp"
	case l4.GetSCTP() != nil:
		return "sctp"
	case l4.GetICMPv4() != nil:
		return "icmpv4"
	case l4.GetICMPv6() != nil:
		return "icmpv6"
	}
	return ""
}

var knownProtocols = map[string]bool{
	"tcp": true, "udp": true, "sctp": true, "icmp": true, "icmpv4": true, "icmpv6": true,
	"http": true, "dns": true, "kafka": true,
}

func protocolFilter(values []string) (func(*flowpb.Flow) bool, error) {
	if len(values) == 0 {
		return nil, nil
	}
	want := make([]string, 0, len(values))
	for _, v := range values {
		p := strings.ToLower(v)
		if !knownProtocols[p] {
			return nil, fmt.Errorf("field protocol: unknown protocol %q (want tcp, udp, sctp, icmp, icmpv4, icmpv6, http, dns, kafka)", v)
		}
		want = append(want, p)
	}
	return func(f *flowpb.Flow) bool {
		p := ProtocolName(f)
		return slices.ContainsFunc(want, func(w string) bool {
			switch w {
			case "http":
				return f.GetL7().GetHttp() != nil
			case "dns":
				return f.GetL7().GetDns() != nil
			case "kafka":
				return f.GetL7().GetKafka() != nil
			}
			return w == p || (w == "icmp" && (p == "icmpv4" || p == "icmpv6"))
		})
	}, nil
}

// nodeNameFilter matches node names against glob patterns; a "cluster/"
// prefix is ignored (Bulwark is one cluster).
func nodeNameFilter(values []string) (func(*flowpb.Flow) bool, error) {
	if len(values) == 0 {
		return nil, nil
	}
	pats := make([]string, 0, len(values))
	for _, v := range values {
		if i := strings.LastIndex(v, "/"); i >= 0 {
			v = v[i+1:]
		}
		if _, err := path.Match(v, ""); err != nil {
			return nil, fmt.Errorf("field node_name: pattern %q: %w", v, err)
		}
		pats = append(pats, v)
	}
	return func(f *flowpb.Flow) bool {
		return slices.ContainsFunc(pats, func(p string) bool {
			ok, _ := path.Match(p, f.GetNodeName())
			return ok
		})
	}, nil
}
