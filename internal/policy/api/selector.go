package api

import (
	"fmt"
	"sort"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
)

// Label sources a selector key may carry ("source:key").
const (
	SourceK8s      = "k8s"
	SourceAny      = "any"
	SourceReserved = "reserved"
	SourceUnspec   = "unspec"
)

// Well-known label keys (without source prefix).
const (
	// LabelPodNamespace is the namespace of a pod as Cilium labels it.
	LabelPodNamespace = "io.kubernetes.pod.namespace"
	// LabelServiceAccount is the service account of a pod.
	LabelServiceAccount = "io.cilium.k8s.policy.serviceaccount"
	// LabelCluster is the cluster name of a pod.
	LabelCluster = "io.cilium.k8s.policy.cluster"
	// NamespaceLabelPrefix prefixes the labels of a pod's namespace:
	// "io.cilium.k8s.namespace.labels.<key>".
	NamespaceLabelPrefix = "io.cilium.k8s.namespace.labels."
	// ReservedLabelPrefix is the normalised key prefix of reserved labels:
	// a selector on "reserved:host" becomes "reserved.bulwark.io/host".
	// Identities must carry reserved labels under this prefix and must never
	// take such keys from user-controlled pod labels.
	ReservedLabelPrefix = "reserved.bulwark.io/"
)

// NormalizeKey strips a Cilium source prefix from a selector key. Keys with
// source k8s, any or unspec (or none) are returned bare; reserved keys
// become ReservedLabelPrefix+name. Other sources are an error: Bulwark
// identities carry no such labels.
func NormalizeKey(key string) (string, error) {
	src, name, ok := strings.Cut(key, ":")
	if !ok {
		return key, nil
	}
	switch src {
	case SourceK8s, SourceAny, SourceUnspec, "":
		return name, nil
	case SourceReserved:
		return ReservedLabelPrefix + name, nil
	}
	return "", fmt.Errorf("label source %q of key %q is not supported in selectors (use k8s:, any: or reserved:)", src, key)
}

// Normalized returns the selector with every key normalised (NormalizeKey).
// Keys that normalise to the same name with different values in matchLabels
// are turned into two requirements, so the selector matches nothing, as in
// Cilium.
func (s EndpointSelector) Normalized() (metav1.LabelSelector, error) {
	var out metav1.LabelSelector
	keys := make([]string, 0, len(s.MatchLabels))
	for k := range s.MatchLabels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		nk, err := NormalizeKey(k)
		if err != nil {
			return out, fmt.Errorf("matchLabels: %w", err)
		}
		v := s.MatchLabels[k]
		if old, dup := out.MatchLabels[nk]; dup && old != v {
			out.MatchExpressions = append(out.MatchExpressions, metav1.LabelSelectorRequirement{
				Key: nk, Operator: metav1.LabelSelectorOpIn, Values: []string{v},
			})
			continue
		}
		if out.MatchLabels == nil {
			out.MatchLabels = map[string]string{}
		}
		out.MatchLabels[nk] = v
	}
	for i, r := range s.MatchExpressions {
		nk, err := NormalizeKey(r.Key)
		if err != nil {
			return out, fmt.Errorf("matchExpressions[%d]: %w", i, err)
		}
		r.Key = nk
		r.Values = append([]string(nil), r.Values...)
		out.MatchExpressions = append(out.MatchExpressions, r)
	}
	return out, nil
}

// Selector converts the selector to a labels.Selector over normalised keys
// (see NormalizeKey). An empty selector matches everything. Errors name the
// offending key or operator.
func (s EndpointSelector) Selector() (labels.Selector, error) {
	n, err := s.Normalized()
	if err != nil {
		return nil, err
	}
	sel := labels.NewSelector()
	keys := make([]string, 0, len(n.MatchLabels))
	for k := range n.MatchLabels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		r, err := labels.NewRequirement(k, selection.Equals, []string{n.MatchLabels[k]})
		if err != nil {
			return nil, fmt.Errorf("matchLabels: %w", err)
		}
		sel = sel.Add(*r)
	}
	for i, e := range n.MatchExpressions {
		var op selection.Operator
		switch e.Operator {
		case metav1.LabelSelectorOpIn:
			op = selection.In
		case metav1.LabelSelectorOpNotIn:
			op = selection.NotIn
		case metav1.LabelSelectorOpExists:
			op = selection.Exists
		case metav1.LabelSelectorOpDoesNotExist:
			op = selection.DoesNotExist
		default:
			return nil, fmt.Errorf("matchExpressions[%d].operator: %q is not a valid selector operator (In, NotIn, Exists, DoesNotExist)", i, e.Operator)
		}
		r, err := labels.NewRequirement(e.Key, op, e.Values)
		if err != nil {
			return nil, fmt.Errorf("matchExpressions[%d]: %w", i, err)
		}
		sel = sel.Add(*r)
	}
	return sel, nil
}

// IsEmpty reports whether the selector has no requirement (selects all).
func (s EndpointSelector) IsEmpty() bool {
	return len(s.MatchLabels) == 0 && len(s.MatchExpressions) == 0
}

// MentionsKey reports whether any requirement of the selector names the
// (normalised) key.
func (s EndpointSelector) MentionsKey(key string) bool {
	for k := range s.MatchLabels {
		if nk, err := NormalizeKey(k); err == nil && nk == key {
			return true
		}
	}
	for _, e := range s.MatchExpressions {
		if nk, err := NormalizeKey(e.Key); err == nil && nk == key {
			return true
		}
	}
	return false
}

// MentionsReserved reports whether the selector names a reserved: label
// (such selectors pick reserved identities and are never namespaced).
func (s EndpointSelector) MentionsReserved() bool {
	for k := range s.MatchLabels {
		if strings.HasPrefix(k, SourceReserved+":") {
			return true
		}
	}
	for _, e := range s.MatchExpressions {
		if strings.HasPrefix(e.Key, SourceReserved+":") {
			return true
		}
	}
	return false
}

// MentionsNamespace reports whether the selector constrains the pod
// namespace label (io.kubernetes.pod.namespace, with any source prefix).
func (s EndpointSelector) MentionsNamespace() bool {
	return s.MentionsKey(LabelPodNamespace)
}

// DeepCopy returns an independent copy.
func (s EndpointSelector) DeepCopy() EndpointSelector {
	return EndpointSelector{LabelSelector: *s.LabelSelector.DeepCopy()}
}

// WithNamespace returns a copy of s that additionally requires the pod
// namespace to be ns.
func (s EndpointSelector) WithNamespace(ns string) EndpointSelector {
	c := s.DeepCopy()
	if c.MatchLabels == nil {
		c.MatchLabels = map[string]string{}
	}
	c.MatchLabels[SourceK8s+":"+LabelPodNamespace] = ns
	return c
}

// withoutNamespaceMatch returns a copy of s without matchLabels entries on
// the pod namespace label (matchExpressions are kept).
func (s EndpointSelector) withoutNamespaceMatch() EndpointSelector {
	c := s.DeepCopy()
	for k := range c.MatchLabels {
		if nk, err := NormalizeKey(k); err == nil && nk == LabelPodNamespace {
			delete(c.MatchLabels, k)
		}
	}
	return c
}

// EffectivePeerSelector is the selector a peer list entry (fromEndpoints,
// toEndpoints, fromRequires, toRequires) of a policy in namespace
// policyNamespace really means: for a namespaced policy, a selector that does
// not mention the namespace label (nor a reserved: label) is confined to the
// policy's namespace; a selector that does is taken as written. For a cluster-scoped
// policy (policyNamespace == "") the selector is cluster-wide.
func EffectivePeerSelector(policyNamespace string, s EndpointSelector) EndpointSelector {
	if policyNamespace == "" || s.MentionsNamespace() || s.MentionsReserved() {
		return s.DeepCopy()
	}
	return s.WithNamespace(policyNamespace)
}

// EffectiveSubjectSelector is the selector of the endpoints a rule applies
// to (its endpointSelector): a namespaced policy always applies in its own
// namespace only: a matchLabels entry naming another namespace is replaced
// by the policy's namespace (Cilium drops such a match and logs it), and
// matchExpressions on the namespace are ANDed with it. A cluster-scoped
// policy applies cluster-wide.
func EffectiveSubjectSelector(policyNamespace string, s EndpointSelector) EndpointSelector {
	if policyNamespace == "" {
		return s.DeepCopy()
	}
	return s.withoutNamespaceMatch().WithNamespace(policyNamespace)
}
