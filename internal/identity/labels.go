package identity

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// Label sources, as in Cilium's "source:key=value" notation.
const (
	SourceK8s      = "k8s"      // pod labels and the derived namespace/serviceaccount labels
	SourceReserved = "reserved" // entities: host, world, ...
	SourceCIDR     = "cidr"     // every prefix containing a CIDR identity's prefix
	SourceFQDN     = "fqdn"     // names learned by the DNS proxy
	SourceAny      = "any"      // in selectors only: matches every source
)

// Label keys derived from a pod's context (Cilium's names).
const (
	LabelNamespace        = "io.kubernetes.pod.namespace"
	LabelNamespacePrefix  = "io.cilium.k8s.namespace.labels."
	LabelServiceAccount   = "io.cilium.k8s.policy.serviceaccount"
	LabelCluster          = "io.cilium.k8s.policy.cluster"
	LabelNamespaceMetaKey = "kubernetes.io/metadata.name"
	DefaultClusterName    = "default"
)

// Label is one security label.
type Label struct {
	Source, Key, Value string
}

func (l Label) String() string {
	if l.Value == "" {
		return l.Source + ":" + l.Key
	}
	return l.Source + ":" + l.Key + "=" + l.Value
}

// Labels is a security label set. Invariant: sorted by (Source, Key, Value)
// and free of duplicates; build it with NewLabels.
type Labels []Label

// NewLabels sorts and de-duplicates ls into a Labels.
func NewLabels(ls ...Label) Labels {
	out := append(Labels(nil), ls...)
	sort.Slice(out, func(i, j int) bool { return less(out[i], out[j]) })
	dedup := out[:0]
	for i, l := range out {
		if i > 0 && l == out[i-1] {
			continue
		}
		dedup = append(dedup, l)
	}
	return dedup
}

func less(a, b Label) bool {
	if a.Source != b.Source {
		return a.Source < b.Source
	}
	if a.Key != b.Key {
		return a.Key < b.Key
	}
	return a.Value < b.Value
}

// String is the canonical text of the set ("k8s:app=web,k8s:io.kubernetes.pod.namespace=demo").
// Two sets are equal if and only if their strings are equal.
func (ls Labels) String() string {
	var b strings.Builder
	for i, l := range ls {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(l.String())
	}
	return b.String()
}

// Get returns the value of the first label with key from source (any source
// if source is "" or SourceAny).
func (ls Labels) Get(source, key string) (string, bool) {
	for _, l := range ls {
		if l.Key == key && (source == "" || source == SourceAny || l.Source == source) {
			return l.Value, true
		}
	}
	return "", false
}

// PodContext is what makes up a pod's security labels besides its own labels.
type PodContext struct {
	Namespace       string
	NamespaceLabels map[string]string
	ServiceAccount  string // empty: no serviceaccount label
	Cluster         string // empty: DefaultClusterName
}

// PodLabels returns the security labels of a pod: its identity-relevant
// labels (IsIdentityRelevant: rollout hashes and the like are left out),
// its namespace, the namespace's labels (with kubernetes.io/metadata.name
// always set), its service account and cluster, all from source k8s.
func PodLabels(podLabels map[string]string, ctx PodContext) Labels {
	ls := make([]Label, 0, len(podLabels)+len(ctx.NamespaceLabels)+4)
	for k, v := range podLabels {
		if IsIdentityRelevant(k) {
			ls = append(ls, Label{SourceK8s, k, v})
		}
	}
	ls = append(ls, Label{SourceK8s, LabelNamespace, ctx.Namespace})
	ls = append(ls, Label{SourceK8s, LabelNamespacePrefix + LabelNamespaceMetaKey, ctx.Namespace})
	for k, v := range ctx.NamespaceLabels {
		if k == LabelNamespaceMetaKey {
			continue
		}
		ls = append(ls, Label{SourceK8s, LabelNamespacePrefix + k, v})
	}
	if ctx.ServiceAccount != "" {
		ls = append(ls, Label{SourceK8s, LabelServiceAccount, ctx.ServiceAccount})
	}
	cluster := ctx.Cluster
	if cluster == "" {
		cluster = DefaultClusterName
	}
	ls = append(ls, Label{SourceK8s, LabelCluster, cluster})
	return NewLabels(ls...)
}

// CIDRLabels returns the labels of a CIDR identity: one cidr: label for the
// prefix and every shorter prefix containing it (so that a selector on any
// containing prefix, with or without excepts, is a plain label match), plus
// the world label of its family.
func CIDRLabels(p netip.Prefix) Labels {
	p = p.Masked()
	ls := make([]Label, 0, p.Bits()+2)
	for bits := p.Bits(); bits >= 0; bits-- {
		q, _ := p.Addr().Prefix(bits)
		ls = append(ls, Label{SourceCIDR, CIDRKey(q), ""})
	}
	if p.Addr().Is4() {
		ls = append(ls, Label{SourceReserved, "world-ipv4", ""})
	} else {
		ls = append(ls, Label{SourceReserved, "world-ipv6", ""})
	}
	return NewLabels(ls...)
}

// CIDRKey is the label key of a prefix. IPv6 colons are written as dashes
// (as Cilium does) so that the key never contains the source separator.
func CIDRKey(p netip.Prefix) string {
	s := p.Masked().String()
	return strings.ReplaceAll(s, ":", "-")
}

// ParsePrefix parses an address or a prefix ("10.0.0.1" is 10.0.0.1/32).
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("not an address or prefix: %q", s)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}
