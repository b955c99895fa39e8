package validate

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/api"
)

// validateEndpointSelector checks a Cilium selector with Kubernetes label
// selector rules, after stripping source prefixes (k8s:, any:, reserved:).
func validateEndpointSelector(r *reporter, path *field.Path, s api.EndpointSelector) {
	for k, v := range s.MatchLabels {
		p := path.Child("matchLabels").Key(k)
		nk, err := api.NormalizeKey(k)
		if err != nil {
			r.errorf("selector", p, "%v", err)
			continue
		}
		warnNonIdentityKey(r, p, nk)
		if msgs := labelKeyErrors(nk); len(msgs) > 0 {
			r.errorf("selector", p, "invalid label key %q: %s", k, joinMsgs(msgs))
		}
		if msgs := validation.IsValidLabelValue(v); len(msgs) > 0 {
			r.errorf("selector", p, "invalid label value %q: %s", v, joinMsgs(msgs))
		}
	}
	for i, e := range s.MatchExpressions {
		p := path.Child("matchExpressions").Index(i)
		validateRequirement(r, p, e, true)
		if nk, err := api.NormalizeKey(e.Key); err == nil {
			warnNonIdentityKey(r, p.Child("key"), nk)
		}
	}
}

// warnNonIdentityKey warns about a pod selector on a label that is never
// part of a pod's identity (identity.IsSelectableKey: rollout hashes,
// job uids, ...). As in Cilium, such a selector behaves as if no pod had
// the label.
func warnNonIdentityKey(r *reporter, p *field.Path, key string) {
	if identity.IsSelectableKey(key) {
		return
	}
	r.warnf("non-identity-label", p, "label %q is not part of pod identities (left out like in Cilium's default label filter): the selector behaves as if no pod had it", key)
}

// warnNonIdentityKeys applies warnNonIdentityKey to a NetworkPolicy pod
// selector.
func warnNonIdentityKeys(r *reporter, path *field.Path, s *metav1.LabelSelector) {
	if s == nil {
		return
	}
	for k := range s.MatchLabels {
		warnNonIdentityKey(r, path.Child("matchLabels").Key(k), k)
	}
	for i, e := range s.MatchExpressions {
		warnNonIdentityKey(r, path.Child("matchExpressions").Index(i).Child("key"), e.Key)
	}
}

// validateRequirement checks one matchExpressions entry. ciliumKeys allows
// source prefixes on the key.
func validateRequirement(r *reporter, p *field.Path, e metav1.LabelSelectorRequirement, ciliumKeys bool) {
	key := e.Key
	if ciliumKeys {
		nk, err := api.NormalizeKey(key)
		if err != nil {
			r.errorf("selector", p.Child("key"), "%v", err)
			return
		}
		key = nk
	}
	if key == "" {
		r.errorf("selector", p.Child("key"), "required")
	} else if msgs := labelKeyErrors(key); len(msgs) > 0 {
		r.errorf("selector", p.Child("key"), "invalid label key %q: %s", e.Key, joinMsgs(msgs))
	}
	switch e.Operator {
	case metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn:
		if len(e.Values) == 0 {
			r.errorf("selector", p.Child("values"), "must be specified when operator is %s", e.Operator)
		}
	case metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist:
		if len(e.Values) > 0 {
			r.errorf("selector", p.Child("values"), "may not be specified when operator is %s", e.Operator)
		}
	case "":
		r.errorf("selector", p.Child("operator"), "required (In, NotIn, Exists or DoesNotExist)")
	default:
		r.errorf("selector", p.Child("operator"), "%q is not a valid selector operator (In, NotIn, Exists, DoesNotExist)", e.Operator)
	}
	for j, v := range e.Values {
		if msgs := validation.IsValidLabelValue(v); len(msgs) > 0 {
			r.errorf("selector", p.Child("values").Index(j), "invalid label value %q: %s", v, joinMsgs(msgs))
		}
	}
}

// validateLabelSelector checks a plain Kubernetes selector (NetworkPolicy).
func validateLabelSelector(r *reporter, path *field.Path, s *metav1.LabelSelector) {
	if s == nil {
		return
	}
	for k, v := range s.MatchLabels {
		p := path.Child("matchLabels").Key(k)
		if msgs := labelKeyErrors(k); len(msgs) > 0 {
			r.errorf("selector", p, "invalid label key %q: %s", k, joinMsgs(msgs))
		}
		if msgs := validation.IsValidLabelValue(v); len(msgs) > 0 {
			r.errorf("selector", p, "invalid label value %q: %s", v, joinMsgs(msgs))
		}
	}
	for i, e := range s.MatchExpressions {
		validateRequirement(r, path.Child("matchExpressions").Index(i), e, false)
	}
}
