package manifest

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// AnnotationOwner marks a pod synthesised from a workload template:
// "Kind/name" of the workload.
const AnnotationOwner = "bulwark.io/synthesized-from"

// WorkloadPods returns the pods the workloads of the set would run, made
// from their templates: replicas pods named "<workload>-<i>" for
// Deployments, StatefulSets and ReplicaSets (at least one, so a workload
// scaled to zero still has its labels checked), one pod for a DaemonSet.
// Each carries the template's labels, the workload's namespace, the
// template spec and AnnotationOwner. Declared Pods are not included.
func (s *Set) WorkloadPods() []*corev1.Pod {
	var out []*corev1.Pod
	add := func(kind string, meta metav1.ObjectMeta, replicas *int32, tmpl corev1.PodTemplateSpec) {
		n := 1
		if replicas != nil && *replicas > 1 {
			n = int(min(*replicas, 16)) // enough to show replication, bounded
		}
		for i := 0; i < n; i++ {
			p := &corev1.Pod{
				TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
				ObjectMeta: metav1.ObjectMeta{
					Name:        fmt.Sprintf("%s-%d", meta.Name, i),
					Namespace:   meta.Namespace,
					Labels:      copyMap(tmpl.Labels),
					Annotations: map[string]string{AnnotationOwner: kind + "/" + meta.Name},
				},
				Spec: *tmpl.Spec.DeepCopy(),
			}
			out = append(out, p)
		}
	}
	for _, d := range s.Deployments {
		add("Deployment", d.ObjectMeta, d.Spec.Replicas, d.Spec.Template)
	}
	for _, d := range s.StatefulSets {
		add("StatefulSet", d.ObjectMeta, d.Spec.Replicas, d.Spec.Template)
	}
	for _, d := range s.ReplicaSets {
		add("ReplicaSet", d.ObjectMeta, d.Spec.Replicas, d.Spec.Template)
	}
	for _, d := range s.DaemonSets {
		add("DaemonSet", d.ObjectMeta, nil, d.Spec.Template)
	}
	return out
}

// AllPods returns the declared Pods followed by WorkloadPods.
func (s *Set) AllPods() []*corev1.Pod {
	return append(append([]*corev1.Pod(nil), s.Pods...), s.WorkloadPods()...)
}

// Workload is a pod-creating object of the set.
type Workload struct {
	Kind string
	Meta *metav1.ObjectMeta
	// Template is the pod template; nil never.
	Template *corev1.PodTemplateSpec
}

// Workloads returns the Deployments, StatefulSets, ReplicaSets and
// DaemonSets of the set.
func (s *Set) Workloads() []Workload {
	var out []Workload
	for _, d := range s.Deployments {
		out = append(out, Workload{"Deployment", &d.ObjectMeta, &d.Spec.Template})
	}
	for _, d := range s.StatefulSets {
		out = append(out, Workload{"StatefulSet", &d.ObjectMeta, &d.Spec.Template})
	}
	for _, d := range s.ReplicaSets {
		out = append(out, Workload{"ReplicaSet", &d.ObjectMeta, &d.Spec.Template})
	}
	for _, d := range s.DaemonSets {
		out = append(out, Workload{"DaemonSet", &d.ObjectMeta, &d.Spec.Template})
	}
	return out
}

func copyMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}
