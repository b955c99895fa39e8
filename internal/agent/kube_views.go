package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/k8s/source"
)

// The read-only views of Kubernetes mode: this node's pods and endpoints
// come from the informers and the CNI endpoints instead of the sandbox.
// Policies, Identities, BPFPolicy and Trace are the sandbox agent's.

func (k *kubeAgent) lastState() *source.State {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.k.last
}

// Status implements agentapi.Backend.
func (k *kubeAgent) Status(ctx context.Context) (agentapi.Status, error) {
	n := k.node
	st := agentapi.Status{
		Instance: k.kopts.NodeName, PID: os.Getpid(), StartedAt: k.started,
		StateDir: k.kopts.Paths.StateDir, Socket: k.kopts.Paths.Socket, Errors: k.recentErrors(),
		DatapathMode: string(n.dp.Mode()), LocalDelivery: n.dp.LocalDelivery(), Revision: n.dp.Revision(),
	}
	eps, _ := k.Endpoints(ctx)
	st.Endpoints = len(eps)
	for _, e := range eps {
		if e.Status == "ready" {
			st.PodsReady++
		}
	}
	n.mu.Lock()
	st.Policies = n.policies
	synced := n.syncedRev
	n.mu.Unlock()
	if s := k.lastState(); s != nil {
		st.Pods = len(s.NodePods(k.kopts.NodeName))
		st.Services = len(s.Objects.Services)
		for _, ns := range s.Objects.Namespaces {
			st.Namespaces = append(st.Namespaces, ns.Name)
		}
	}
	st.Identities = len(k.identities())
	st.Ready = k.isReady() && synced == n.repo.Revision() && st.PodsReady == st.Endpoints && len(st.Errors) == 0
	if n.events != nil {
		st.HubbleAddr, st.HubbleSock = n.events.hubbleAddr, n.events.hubbleSock
		st.MetricsAddr = n.events.metricsAddr
		st.Errors = append(st.Errors, n.events.errors...)
	}
	st.Flows = n.flowStatus()
	return st, nil
}

// Endpoints implements agentapi.Backend: the pods the CNI plugin attached.
func (k *kubeAgent) Endpoints(context.Context) ([]agentapi.Endpoint, error) {
	n := k.node
	rev := n.dp.Revision()
	n.mu.Lock()
	snap, loaded := n.snap, n.loaded
	n.mu.Unlock()
	var out []agentapi.Endpoint
	for _, ep := range k.eps.list() {
		e := agentapi.Endpoint{ID: ep.EndpointID, Pod: ep.podKey(), Interface: ep.HostIfName, Status: "not-ready",
			IngressEnforcement: "enabled", EgressEnforcement: "enabled"}
		for _, ip := range ep.IPs {
			if e.IPv4 == "" && !isV6(ip) {
				e.IPv4 = ip
			} else if e.IPv6 == "" && isV6(ip) {
				e.IPv6 = ip
			}
		}
		if snap != nil {
			if pe := snap.Endpoints[endpointKeyOf(ep.Namespace, ep.Name)]; pe != nil {
				e.Identity = uint32(pe.Identity)
				for _, l := range pe.Labels {
					e.Labels = append(e.Labels, l.String())
				}
				if pe.Policy != nil {
					e.IngressEnforcement = enforcement(pe.Policy.Ingress.Enforced)
					e.EgressEnforcement = enforcement(pe.Policy.Egress.Enforced)
				}
			}
		}
		if loaded[ep.EndpointID] {
			e.Status, e.Revision = "ready", rev
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func isV6(ip string) bool {
	for i := 0; i < len(ip); i++ {
		if ip[i] == ':' {
			return true
		}
	}
	return false
}

// Pods implements agentapi.Backend: this node's pods.
func (k *kubeAgent) Pods(ctx context.Context) ([]agentapi.Pod, error) {
	s := k.lastState()
	if s == nil {
		return nil, nil
	}
	eps, _ := k.Endpoints(ctx)
	byPod := map[string]agentapi.Endpoint{}
	for _, e := range eps {
		byPod[e.Pod] = e
	}
	var out []agentapi.Pod
	for _, p := range s.NodePods(k.kopts.NodeName) {
		ap := agentapi.Pod{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels, Node: p.Spec.NodeName,
			IP: p.Status.PodIP, Status: "Pending", Created: p.CreationTimestamp.Time}
		if len(p.OwnerReferences) > 0 {
			ap.Owner = p.OwnerReferences[0].Kind + "/" + p.OwnerReferences[0].Name
		}
		if e, ok := byPod[podKey(p.Namespace, p.Name)]; ok {
			ap.Endpoint, ap.Identity = e.ID, e.Identity
			if ap.IP == "" {
				ap.IP = e.IPv4
			}
			if e.Status == "ready" {
				ap.Status, ap.Ready = "Running", true
			} else {
				ap.Message = "endpoint not ready: policy not loaded"
			}
		} else {
			ap.Message = "no endpoint (CNI ADD not received)"
		}
		out = append(out, ap)
	}
	return out, nil
}

// Services implements agentapi.Backend: the cluster's services and their
// EndpointSlices' ready addresses (load balancing is kube-proxy's).
func (k *kubeAgent) Services(context.Context) ([]agentapi.Service, error) {
	s := k.lastState()
	if s == nil {
		return nil, nil
	}
	backends := map[string][]string{}
	for _, es := range s.EndpointSlices {
		svc := es.Labels["kubernetes.io/service-name"]
		if svc == "" {
			continue
		}
		key := es.Namespace + "/" + svc
		for _, e := range es.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, a := range e.Addresses {
				for _, p := range es.Ports {
					if p.Port != nil {
						backends[key] = append(backends[key], fmt.Sprintf("%s:%d", a, *p.Port))
					}
				}
			}
		}
	}
	var out []agentapi.Service
	for _, v := range s.Objects.Services {
		as := agentapi.Service{Namespace: v.Namespace, Name: v.Name, Type: string(v.Spec.Type), ClusterIP: v.Spec.ClusterIP, Selector: v.Spec.Selector}
		for _, p := range v.Spec.Ports {
			as.Ports = append(as.Ports, agentapi.ServicePort{Name: p.Name, Port: uint16(p.Port), TargetPort: p.TargetPort.String(), Protocol: string(p.Protocol)})
		}
		as.Backends = backends[v.Namespace+"/"+v.Name]
		sort.Strings(as.Backends)
		out = append(out, as)
	}
	return out, nil
}

// StartUI implements agentapi.UIBackend: the service map reads the
// sandbox's pods, which Kubernetes mode does not have.
func (k *kubeAgent) StartUI(context.Context) (agentapi.UIResponse, error) {
	return agentapi.UIResponse{}, &agentapi.UserError{Err: errors.New("the service map is not served in Kubernetes mode yet; use 'bulwark observe --instance k8s'")}
}

// World implements agentapi.WorldBackend: there is no simulated world in
// Kubernetes mode.
func (k *kubeAgent) World(context.Context, agentapi.WorldRequest) (agentapi.WorldResponse, error) {
	return agentapi.WorldResponse{}, &agentapi.UserError{Err: errors.New("Kubernetes mode has no simulated world")}
}
