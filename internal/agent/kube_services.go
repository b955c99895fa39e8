package agent

import (
	"fmt"
	"net/netip"
	"reflect"
	"sort"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/bulwark-net/bulwark/internal/datapath/socklb"
	"github.com/bulwark-net/bulwark/internal/k8s/source"
)

// kubeLBServices are the cluster's ClusterIP services as socket-level
// translations: every ClusterIP:port to the ready (or, as kube-proxy does
// when none is ready, serving) addresses of its EndpointSlices' matching
// port. Policy then sees, and the datapath enforces on, the backend pod's
// identity, as Cilium's does; kube-proxy's NAT never sees these
// connections. Headless services and ports without backends get no entry
// (a ClusterIP without backends is not routed anywhere).
func kubeLBServices(st *source.State) []socklb.Service {
	slices := map[string][]*discoveryv1.EndpointSlice{}
	for _, es := range st.EndpointSlices {
		svc := es.Labels[discoveryv1.LabelServiceName]
		if svc == "" {
			continue
		}
		key := es.Namespace + "/" + svc
		slices[key] = append(slices[key], es)
	}
	var out []socklb.Service
	for _, v := range st.Objects.Services {
		if v.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		ips := v.Spec.ClusterIPs
		if len(ips) == 0 && v.Spec.ClusterIP != "" {
			ips = []string{v.Spec.ClusterIP}
		}
		for _, sp := range v.Spec.Ports {
			var proto uint8
			switch sp.Protocol {
			case corev1.ProtocolTCP, "":
				proto = socklb.TCP
			case corev1.ProtocolUDP:
				proto = socklb.UDP
			default:
				continue // SCTP: kube-proxy's
			}
			for _, ipStr := range ips {
				cip, err := netip.ParseAddr(ipStr)
				if err != nil || ipStr == corev1.ClusterIPNone {
					continue
				}
				backends := sliceBackends(slices[v.Namespace+"/"+v.Name], sp, cip.Is4())
				if len(backends) == 0 {
					continue
				}
				out = append(out, socklb.Service{Frontend: netip.AddrPortFrom(cip, uint16(sp.Port)), Proto: proto, Backends: backends})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Frontend.Compare(out[j].Frontend); c != 0 {
			return c < 0
		}
		return out[i].Proto < out[j].Proto
	})
	return out
}

// sliceBackends are the addresses (of the family of the ClusterIP) that
// serve sp: the ready ones, or the serving ones when none is ready.
func sliceBackends(slices []*discoveryv1.EndpointSlice, sp corev1.ServicePort, v4 bool) []netip.AddrPort {
	var ready, serving []netip.AddrPort
	seen := map[netip.AddrPort]bool{}
	for _, es := range slices {
		if (es.AddressType == discoveryv1.AddressTypeIPv4) != v4 || es.AddressType == discoveryv1.AddressTypeFQDN {
			continue
		}
		var port int32 = -1
		for _, p := range es.Ports {
			if p.Port == nil {
				continue
			}
			name, proto := "", corev1.ProtocolTCP
			if p.Name != nil {
				name = *p.Name
			}
			if p.Protocol != nil {
				proto = *p.Protocol
			}
			wantProto := sp.Protocol
			if wantProto == "" {
				wantProto = corev1.ProtocolTCP
			}
			if name == sp.Name && proto == wantProto {
				port = *p.Port
			}
		}
		if port <= 0 || port > 65535 {
			continue
		}
		for _, e := range es.Endpoints {
			isReady := e.Conditions.Ready == nil || *e.Conditions.Ready
			isServing := isReady
			if e.Conditions.Serving != nil {
				isServing = *e.Conditions.Serving
			}
			if !isReady && !isServing {
				continue
			}
			for _, a := range e.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil {
					continue
				}
				ap := netip.AddrPortFrom(ip, uint16(port))
				if seen[ap] {
					continue
				}
				seen[ap] = true
				if isReady {
					ready = append(ready, ap)
				} else {
					serving = append(serving, ap)
				}
			}
		}
	}
	if len(ready) == 0 {
		ready = serving
	}
	sort.Slice(ready, func(i, j int) bool { return ready[i].Compare(ready[j]) < 0 })
	return ready
}

// syncServicesLocked pushes the cluster's services into the socket-level
// translation, when the agent runs it (--cgroup-root). a.mu held.
func (k *kubeAgent) syncServicesLocked(st *source.State) error {
	if k.lb == nil {
		return nil
	}
	svcs := kubeLBServices(st)
	if k.lbSynced && reflect.DeepEqual(svcs, k.lbLast) {
		return nil
	}
	if err := k.lb.SetServices(svcs); err != nil {
		k.lbSynced = false
		return fmt.Errorf("service translation: %w", err)
	}
	k.lbLast, k.lbSynced = svcs, true
	return nil
}
