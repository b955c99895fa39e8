package validate

import (
	"strings"

	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/policy/api"
	httpproxy "github.com/bulwark-net/bulwark/internal/proxy/http"
)

// Object validates one decoded object.
func Object(o *manifest.Object) []Finding {
	r := &reporter{obj: o}
	if u, ok := o.Obj.(*manifest.Unsupported); ok {
		if u.IsEnvoyConfig() {
			if _, err := httpproxy.ParseEnvoyConfig(u.Raw); err != nil {
				r.add(Error, "refused", nil, "not enforceable as written, refused rather than ignored: %v", err)
			} else {
				r.add(Info, "enforced", nil, "%s", u.Note)
			}
			return r.out
		}
		r.add(Info, "unsupported", nil, "%s", u.Note)
		return r.out
	}
	validateMeta(r, o)
	switch v := o.Obj.(type) {
	case *networkingv1.NetworkPolicy:
		validateNetworkPolicy(r, v)
	case *corev1.Pod:
		validatePodSpec(r, field.NewPath("spec"), &v.Spec)
	case *corev1.Service:
		validateService(r, v)
	case *appsv1.Deployment:
		validateWorkload(r, v.Spec.Selector, &v.Spec.Template)
	case *appsv1.StatefulSet:
		validateWorkload(r, v.Spec.Selector, &v.Spec.Template)
	case *appsv1.ReplicaSet:
		validateWorkload(r, v.Spec.Selector, &v.Spec.Template)
	case *appsv1.DaemonSet:
		validateWorkload(r, v.Spec.Selector, &v.Spec.Template)
	case api.Policy:
		validateCiliumPolicy(r, v)
	}
	engineRefusals(r, o.Obj)
	return r.out
}

func validateMeta(r *reporter, o *manifest.Object) {
	meta := field.NewPath("metadata")
	if o.Name == "" {
		r.errorf("metadata", meta.Child("name"), "required")
	} else {
		check := validation.IsDNS1123Subdomain
		if o.Kind == "Namespace" || o.Kind == "Service" {
			check = validation.IsDNS1123Label
		}
		for _, msg := range check(o.Name) {
			r.errorf("metadata", meta.Child("name"), "invalid name %q: %s", o.Name, msg)
		}
	}
	if o.Namespace != "" {
		for _, msg := range validation.IsDNS1123Label(o.Namespace) {
			r.errorf("metadata", meta.Child("namespace"), "invalid namespace %q: %s", o.Namespace, msg)
		}
	}
	if m, ok := o.Obj.(interface{ GetLabels() map[string]string }); ok {
		r.fieldErrors("metadata", metav1validation.ValidateLabels(m.GetLabels(), meta.Child("labels")))
	}
}

// labelKeyErrors validates a normalised label key.
func labelKeyErrors(key string) []string {
	return validation.IsQualifiedName(key)
}

func joinMsgs(msgs []string) string { return strings.Join(msgs, "; ") }
