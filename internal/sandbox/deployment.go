package sandbox

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// nonHTTPPorts are well-known TCP ports of protocols that do not speak
// HTTP; a container port on one of them (and not named http*) is served as
// plain TCP (accept, banner, hold).
var nonHTTPPorts = map[int]bool{
	21: true, 22: true, 23: true, 25: true, 53: true, 110: true, 143: true,
	389: true, 465: true, 587: true, 636: true, 993: true, 995: true,
	1433: true, 1521: true, 2181: true, 3306: true, 4222: true, 5432: true,
	5671: true, 5672: true, 6379: true, 9042: true, 9092: true,
	11211: true, 26379: true, 27017: true,
}

// httpNamePrefixes and tcpNames classify a port by its name first.
var (
	httpNamePrefixes = []string{"http", "https", "web", "grpc", "h2c", "metrics", "api"}
	tcpNames         = map[string]bool{"tcp": true, "postgres": true, "postgresql": true, "pg": true, "mysql": true,
		"redis": true, "mongo": true, "mongodb": true, "cql": true, "amqp": true, "kafka": true, "memcached": true,
		"zookeeper": true, "ssh": true, "smtp": true, "dns-tcp": true, "db": true, "database": true}
)

// PortKindFor is the rule that decides how the workload serves a port:
// UDP ports echo; a TCP port named http*, https*, web*, grpc*, h2c*,
// metrics* or api* answers HTTP; a TCP port named like a non-HTTP protocol
// (postgres, mysql, redis, tcp, ...) or on a well-known non-HTTP port
// (5432, 3306, 6379, 9042, 27017, ...) is plain TCP; every other TCP port
// answers HTTP.
func PortKindFor(p ContainerPort) PortKind {
	if p.Protocol == "UDP" {
		return PortUDP
	}
	name := strings.ToLower(p.Name)
	for _, pre := range httpNamePrefixes {
		if strings.HasPrefix(name, pre) {
			return PortHTTP
		}
	}
	if tcpNames[name] || nonHTTPPorts[p.Port] {
		return PortTCP
	}
	return PortHTTP
}

// templateHashOf is a stable 10-hex-digit hash (the pod-template-hash).
func templateHashOf(v string) string {
	h := fnv.New64a()
	h.Write([]byte(v))
	return fmt.Sprintf("%016x", h.Sum64())[:10]
}

// PodTemplateHash is the pod-template-hash of a Deployment's template:
// stable for an unchanged template, different when it changes.
func PodTemplateHash(t corev1.PodTemplateSpec) (string, error) {
	b, err := json.Marshal(t)
	if err != nil {
		return "", fmt.Errorf("encode pod template: %w", err)
	}
	return templateHashOf(string(b)), nil
}

// suffixAlphabet is Kubernetes' alphabet for generated name suffixes (no
// vowels, no confusable characters).
const suffixAlphabet = "bcdfghjklmnpqrstvwxz2456789"

// ReplicaPodName is the name of replica i of a Deployment's ReplicaSet:
// <deployment>-<template hash>-<5 characters>, stable for (deployment,
// hash, i) so an agent restart finds the same pods.
func ReplicaPodName(deployment, templateHash string, i int) string {
	h := fnv.New64a()
	h.Write([]byte(deployment + "/" + templateHash + "/" + strconv.Itoa(i)))
	v := h.Sum64()
	var b [5]byte
	for j := range b {
		b[j] = suffixAlphabet[v%uint64(len(suffixAlphabet))]
		v /= uint64(len(suffixAlphabet))
	}
	return deployment + "-" + templateHash + "-" + string(b[:])
}

// PortsFromContainers collects the declared ports of containers.
func PortsFromContainers(cs []corev1.Container) []ContainerPort {
	var out []ContainerPort
	for _, c := range cs {
		for _, p := range c.Ports {
			proto := string(p.Protocol)
			if proto == "" {
				proto = "TCP"
			}
			cp := ContainerPort{Name: p.Name, Port: int(p.ContainerPort), Protocol: proto}
			cp.Kind = PortKindFor(cp)
			out = append(out, cp)
		}
	}
	return out
}

// PodsForDeployment returns the pods a Deployment's ReplicaSet would run:
// spec.replicas (default 1) pods with the template's labels plus
// pod-template-hash, Kubernetes-style names and the containers' ports.
func PodsForDeployment(d *appsv1.Deployment) ([]PodSpec, error) {
	obj := "deployment " + d.Namespace + "/" + d.Name
	ns := d.Namespace
	if ns == "" {
		ns = "default"
	}
	replicas := 1
	if d.Spec.Replicas != nil {
		replicas = int(*d.Spec.Replicas)
	}
	if replicas < 0 {
		return nil, fmt.Errorf("%s: spec.replicas %d: must not be negative", obj, replicas)
	}
	if d.Spec.Selector != nil {
		for k, v := range d.Spec.Selector.MatchLabels {
			if d.Spec.Template.Labels[k] != v {
				return nil, fmt.Errorf("%s: spec.selector.matchLabels %s=%s does not match spec.template.metadata.labels", obj, k, v)
			}
		}
	}
	hash, err := PodTemplateHash(d.Spec.Template)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", obj, err)
	}
	ports := PortsFromContainers(d.Spec.Template.Spec.Containers)
	var out []PodSpec
	for i := 0; i < replicas; i++ {
		labels := map[string]string{"pod-template-hash": hash}
		for k, v := range d.Spec.Template.Labels {
			labels[k] = v
		}
		spec := PodSpec{
			Namespace: ns, Name: ReplicaPodName(d.Name, hash, i), Labels: labels,
			Ports: append([]ContainerPort(nil), ports...), OwnerDeployment: d.Name,
		}
		if err := validatePodSpec(&spec); err != nil {
			return nil, fmt.Errorf("%s: %w", obj, err)
		}
		out = append(out, spec)
	}
	return out, nil
}

// PodSpecFromPod converts a bare Pod.
func PodSpecFromPod(p *corev1.Pod) (PodSpec, error) {
	ns := p.Namespace
	if ns == "" {
		ns = "default"
	}
	spec := PodSpec{Namespace: ns, Name: p.Name, Labels: p.Labels, Ports: PortsFromContainers(p.Spec.Containers)}
	if err := validatePodSpec(&spec); err != nil {
		return PodSpec{}, err
	}
	return spec, nil
}

// ServiceSpecFromService converts a ClusterIP Service.
func ServiceSpecFromService(s *corev1.Service) (ServiceSpec, error) {
	ns := s.Namespace
	if ns == "" {
		ns = "default"
	}
	obj := "service " + ns + "/" + s.Name
	if s.Spec.Type != "" && s.Spec.Type != corev1.ServiceTypeClusterIP {
		return ServiceSpec{}, fmt.Errorf("%s: spec.type %s: the sandbox supports ClusterIP services only", obj, s.Spec.Type)
	}
	spec := ServiceSpec{Namespace: ns, Name: s.Name, Selector: s.Spec.Selector, ClusterIP: s.Spec.ClusterIP}
	for _, p := range s.Spec.Ports {
		sp := ServicePort{Name: p.Name, Protocol: string(p.Protocol), Port: int(p.Port)}
		if p.TargetPort.String() != "0" && p.TargetPort.String() != "" {
			sp.TargetPort = p.TargetPort.String()
		}
		spec.Ports = append(spec.Ports, sp)
	}
	return spec, nil
}
