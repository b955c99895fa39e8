package manifest

import (
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// applyDefaults applies the API server's defaulting that matters to policy:
// NetworkPolicy policyTypes and port protocols, Service port protocols and
// target ports, container port protocols, workload replicas.
func applyDefaults(obj any) {
	switch v := obj.(type) {
	case *networkingv1.NetworkPolicy:
		defaultNetworkPolicy(v)
	case *corev1.Service:
		for i := range v.Spec.Ports {
			p := &v.Spec.Ports[i]
			if p.Protocol == "" {
				p.Protocol = corev1.ProtocolTCP
			}
			if p.TargetPort.Type == intstr.Int && p.TargetPort.IntVal == 0 {
				p.TargetPort = intstr.FromInt32(p.Port)
			}
		}
		if v.Spec.Type == "" {
			v.Spec.Type = corev1.ServiceTypeClusterIP
		}
	case *corev1.Pod:
		defaultPodSpec(&v.Spec)
	case *appsv1.Deployment:
		defaultReplicas(&v.Spec.Replicas)
		defaultPodSpec(&v.Spec.Template.Spec)
	case *appsv1.StatefulSet:
		defaultReplicas(&v.Spec.Replicas)
		defaultPodSpec(&v.Spec.Template.Spec)
	case *appsv1.ReplicaSet:
		defaultReplicas(&v.Spec.Replicas)
		defaultPodSpec(&v.Spec.Template.Spec)
	case *appsv1.DaemonSet:
		defaultPodSpec(&v.Spec.Template.Spec)
	}
}

// defaultNetworkPolicy: policyTypes defaults to [Ingress], plus Egress when
// the policy has egress rules; port protocols default to TCP.
func defaultNetworkPolicy(np *networkingv1.NetworkPolicy) {
	if len(np.Spec.PolicyTypes) == 0 {
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		if len(np.Spec.Egress) > 0 {
			np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		}
	}
	tcp := corev1.ProtocolTCP
	for i := range np.Spec.Ingress {
		for j := range np.Spec.Ingress[i].Ports {
			if np.Spec.Ingress[i].Ports[j].Protocol == nil {
				np.Spec.Ingress[i].Ports[j].Protocol = &tcp
			}
		}
	}
	for i := range np.Spec.Egress {
		for j := range np.Spec.Egress[i].Ports {
			if np.Spec.Egress[i].Ports[j].Protocol == nil {
				np.Spec.Egress[i].Ports[j].Protocol = &tcp
			}
		}
	}
}

func defaultPodSpec(spec *corev1.PodSpec) {
	for _, cs := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for i := range cs {
			for j := range cs[i].Ports {
				if cs[i].Ports[j].Protocol == "" {
					cs[i].Ports[j].Protocol = corev1.ProtocolTCP
				}
			}
		}
	}
}

func defaultReplicas(r **int32) {
	if *r == nil {
		one := int32(1)
		*r = &one
	}
}
