package agent

import (
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/bulwark-net/bulwark/internal/datapath/socklb"
	"github.com/bulwark-net/bulwark/internal/k8s/source"
	"github.com/bulwark-net/bulwark/internal/manifest"
)

func ptr[T any](v T) *T { return &v }

func slice(ns, svc string, af discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: svc + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: af, Ports: ports, Endpoints: eps,
	}
}

func endpoint(addr string, ready, serving bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &serving}}
}

// TestKubeLBServices: ClusterIP:port → the ready backends of the matching
// EndpointSlice port (by name and protocol), serving ones only when none
// is ready; headless, ExternalName and backend-less ports get no entry.
func TestKubeLBServices(t *testing.T) {
	svc := func(name, ip string, ports ...corev1.ServicePort) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip}, Ports: ports}}
	}
	dnsPorts := []discoveryv1.EndpointPort{
		{Name: ptr("dns"), Port: ptr(int32(1053)), Protocol: ptr(corev1.ProtocolUDP)},
		{Name: ptr("dns-tcp"), Port: ptr(int32(1053)), Protocol: ptr(corev1.ProtocolTCP)},
	}
	st := &source.State{Objects: &manifest.Set{Services: []*corev1.Service{
		svc("backend", "10.96.0.20", corev1.ServicePort{Port: 8080, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt(8080)}),
		svc("dns", "10.96.0.10",
			corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
			corev1.ServicePort{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP}),
		svc("headless", corev1.ClusterIPNone, corev1.ServicePort{Port: 80}),
		svc("empty", "10.96.0.30", corev1.ServicePort{Port: 80}),
		svc("draining", "10.96.0.40", corev1.ServicePort{Port: 80}),
	}}, EndpointSlices: []*discoveryv1.EndpointSlice{
		slice("demo", "backend", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{{Name: ptr(""), Port: ptr(int32(8080))}},
			endpoint("10.244.1.3", true, true), endpoint("10.244.0.3", true, true), endpoint("10.244.0.9", false, false)),
		slice("demo", "dns", discoveryv1.AddressTypeIPv4, dnsPorts, endpoint("10.244.1.2", true, true)),
		slice("demo", "headless", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{{Port: ptr(int32(80))}}, endpoint("10.244.0.5", true, true)),
		slice("demo", "draining", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{{Port: ptr(int32(80))}},
			endpoint("10.244.0.7", false, true), endpoint("10.244.0.8", false, false)),
		slice("other", "backend", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{{Port: ptr(int32(8080))}}, endpoint("10.244.9.9", true, true)),
	}}
	ap := netip.MustParseAddrPort
	want := []socklb.Service{
		{Frontend: ap("10.96.0.10:53"), Proto: socklb.TCP, Backends: []netip.AddrPort{ap("10.244.1.2:1053")}},
		{Frontend: ap("10.96.0.10:53"), Proto: socklb.UDP, Backends: []netip.AddrPort{ap("10.244.1.2:1053")}},
		{Frontend: ap("10.96.0.20:8080"), Proto: socklb.TCP, Backends: []netip.AddrPort{ap("10.244.0.3:8080"), ap("10.244.1.3:8080")}},
		{Frontend: ap("10.96.0.40:80"), Proto: socklb.TCP, Backends: []netip.AddrPort{ap("10.244.0.7:80")}},
	}
	if got := kubeLBServices(st); !reflect.DeepEqual(got, want) {
		t.Errorf("kubeLBServices:\n got %v\nwant %v", got, want)
	}
}
