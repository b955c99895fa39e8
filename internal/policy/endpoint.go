package policy

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	corev1 "k8s.io/api/core/v1"
)

// EndpointKey names an endpoint (a pod).
type EndpointKey struct {
	Namespace, Name string
}

func (k EndpointKey) String() string { return k.Namespace + "/" + k.Name }

// NamedPort is a container port of a pod.
type NamedPort struct {
	Name  string // lower case; empty for an unnamed port
	Proto resolved.Protocol
	Port  uint16
}

// Endpoint is a pod as the engine sees it, with its resolved policy.
// Invariant: immutable once published in a Snapshot (changes make a new
// Endpoint).
type Endpoint struct {
	Key      EndpointKey
	IP       netip.Addr   // the primary address (status.podIP); invalid when the pod has none yet
	IPs      []netip.Addr // every address (status.podIPs), the primary first
	Identity identity.NumericIdentity
	Labels   identity.Labels
	Ports    []NamedPort
	Policy   *resolved.EndpointPolicy

	podLabels      map[string]string
	serviceAccount string
	rules          []*compiledRule // rules selecting the endpoint, in policy order
}

// podInput is a validated pod.
type podInput struct {
	key            EndpointKey
	labels         map[string]string
	serviceAccount string
	ip             netip.Addr   // primary
	ips            []netip.Addr // all, primary first, distinct
	ports          []NamedPort
}

func podFromObject(p *corev1.Pod) (podInput, error) {
	in := podInput{key: EndpointKey{p.Namespace, p.Name}, labels: p.Labels, serviceAccount: p.Spec.ServiceAccountName}
	where := "Pod " + in.key.String()
	if p.Name == "" {
		return in, fmt.Errorf("Pod: metadata.name is empty")
	}
	if p.Namespace == "" {
		in.key.Namespace = "default"
	}
	// A dual-stack pod has one address per family: status.podIP is the
	// primary and status.podIPs lists all of them. Every one of them must
	// resolve to the pod's identity, or its other family's traffic would be
	// taken for the world's.
	addAddr := func(field, ip string) error {
		ip = strings.TrimSpace(ip)
		if ip == "" {
			return nil
		}
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return fmt.Errorf("%s: %s: %q is not an IP address", where, field, ip)
		}
		a = a.Unmap()
		for _, have := range in.ips {
			if have == a {
				return nil
			}
		}
		in.ips = append(in.ips, a)
		return nil
	}
	if err := addAddr("status.podIP", p.Status.PodIP); err != nil {
		return in, err
	}
	for i, pip := range p.Status.PodIPs {
		if err := addAddr(fmt.Sprintf("status.podIPs[%d].ip", i), pip.IP); err != nil {
			return in, err
		}
	}
	if len(in.ips) > 0 {
		in.ip = in.ips[0]
	}
	seen := map[string]bool{}
	for i, c := range p.Spec.Containers {
		for j, cp := range c.Ports {
			proto := resolved.ProtoTCP
			switch cp.Protocol {
			case "", corev1.ProtocolTCP:
			case corev1.ProtocolUDP:
				proto = resolved.ProtoUDP
			case corev1.ProtocolSCTP:
				proto = resolved.ProtoSCTP
			default:
				return in, fmt.Errorf("%s: spec.containers[%d].ports[%d].protocol: %q is not TCP, UDP or SCTP", where, i, j, cp.Protocol)
			}
			if cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
				return in, fmt.Errorf("%s: spec.containers[%d].ports[%d].containerPort: %d is out of range 1-65535", where, i, j, cp.ContainerPort)
			}
			name := strings.ToLower(cp.Name)
			if name != "" {
				if seen[name] {
					return in, fmt.Errorf("%s: spec.containers[%d].ports[%d].name: %q is used twice", where, i, j, cp.Name)
				}
				seen[name] = true
			}
			in.ports = append(in.ports, NamedPort{Name: name, Proto: proto, Port: uint16(cp.ContainerPort)})
		}
	}
	sort.Slice(in.ports, func(i, j int) bool {
		a, b := in.ports[i], in.ports[j]
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		if a.Proto != b.Proto {
			return a.Proto < b.Proto
		}
		return a.Port < b.Port
	})
	return in, nil
}
