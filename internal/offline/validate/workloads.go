package validate

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// validateWorkload checks what the API server checks of a workload that
// matters to policy: a selector that matches the template's labels, and
// the template's pod spec.
func validateWorkload(r *reporter, selector *metav1.LabelSelector, tmpl *corev1.PodTemplateSpec) {
	spec := field.NewPath("spec")
	if selector == nil {
		r.errorf("workload", spec.Child("selector"), "required")
	} else {
		validateLabelSelector(r, spec.Child("selector"), selector)
		if sel, err := metav1.LabelSelectorAsSelector(selector); err == nil {
			if sel.Empty() {
				r.errorf("workload", spec.Child("selector"), "empty selector is invalid for a workload")
			} else if !sel.Matches(labels.Set(tmpl.Labels)) {
				r.errorf("workload", spec.Child("template", "metadata", "labels"), "`selector` does not match template `labels`")
			}
		}
	}
	r.fieldErrors("metadata", validateLabelsAt(tmpl.Labels, spec.Child("template", "metadata", "labels")))
	validatePodSpec(r, spec.Child("template", "spec"), &tmpl.Spec)
}

// validatePodSpec checks container ports: numbers, names (named ports are
// what policies refer to), protocols, and names unique within the pod.
func validatePodSpec(r *reporter, path *field.Path, spec *corev1.PodSpec) {
	if len(spec.Containers) == 0 {
		r.errorf("pod", path.Child("containers"), "required")
	}
	names := map[string]bool{}
	check := func(cp *field.Path, cs []corev1.Container) {
		for i, c := range cs {
			if c.Name == "" {
				r.errorf("pod", cp.Index(i).Child("name"), "required")
			}
			for j, p := range c.Ports {
				pp := cp.Index(i).Child("ports").Index(j)
				for _, msg := range validation.IsValidPortNum(int(p.ContainerPort)) {
					r.errorf("pod", pp.Child("containerPort"), "invalid port %d: %s", p.ContainerPort, msg)
				}
				validateProtocol(r, pp.Child("protocol"), p.Protocol)
				if p.Name == "" {
					continue
				}
				for _, msg := range validation.IsValidPortName(p.Name) {
					r.errorf("pod", pp.Child("name"), "invalid port name %q: %s", p.Name, msg)
				}
				if names[p.Name] {
					r.errorf("pod", pp.Child("name"), "duplicate port name %q in the pod", p.Name)
				}
				names[p.Name] = true
			}
		}
	}
	check(path.Child("initContainers"), spec.InitContainers)
	check(path.Child("containers"), spec.Containers)
}

func validateProtocol(r *reporter, p *field.Path, proto corev1.Protocol) {
	switch proto {
	case "", corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
	default:
		r.errorf("protocol", p, "unsupported value %q: supported values: \"TCP\", \"UDP\", \"SCTP\"", string(proto))
	}
}

// validateService checks the ports of a Service.
func validateService(r *reporter, svc *corev1.Service) {
	spec := field.NewPath("spec")
	names := map[string]bool{}
	for i, p := range svc.Spec.Ports {
		pp := spec.Child("ports").Index(i)
		for _, msg := range validation.IsValidPortNum(int(p.Port)) {
			r.errorf("service", pp.Child("port"), "invalid port %d: %s", p.Port, msg)
		}
		validateProtocol(r, pp.Child("protocol"), p.Protocol)
		if len(svc.Spec.Ports) > 1 && p.Name == "" {
			r.errorf("service", pp.Child("name"), "required when a Service has more than one port")
		}
		if p.Name != "" {
			for _, msg := range validation.IsDNS1123Label(p.Name) {
				r.errorf("service", pp.Child("name"), "invalid port name %q: %s", p.Name, msg)
			}
			if names[p.Name] {
				r.errorf("service", pp.Child("name"), "duplicate port name %q", p.Name)
			}
			names[p.Name] = true
		}
		switch p.TargetPort.Type {
		case intstr.Int:
			for _, msg := range validation.IsValidPortNum(int(p.TargetPort.IntVal)) {
				r.errorf("service", pp.Child("targetPort"), "invalid port %d: %s", p.TargetPort.IntVal, msg)
			}
		case intstr.String:
			for _, msg := range validation.IsValidPortName(p.TargetPort.StrVal) {
				r.errorf("service", pp.Child("targetPort"), "invalid port name %q: %s", p.TargetPort.StrVal, msg)
			}
		}
	}
	validateLabelSelector(r, spec.Child("selector"), &metav1.LabelSelector{MatchLabels: svc.Spec.Selector})
}

func validateLabelsAt(ls map[string]string, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	for k, v := range ls {
		for _, msg := range validation.IsQualifiedName(k) {
			errs = append(errs, field.Invalid(p.Key(k), k, msg))
		}
		for _, msg := range validation.IsValidLabelValue(v) {
			errs = append(errs, field.Invalid(p.Key(k), v, msg))
		}
	}
	return errs
}
