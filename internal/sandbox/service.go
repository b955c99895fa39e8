package sandbox

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/bulwark-net/bulwark/internal/datapath/socklb"
	"github.com/bulwark-net/bulwark/internal/sandbox/dns"
	"github.com/bulwark-net/bulwark/internal/sandbox/ipam"
)

// Cluster DNS objects, as in Kubernetes.
const (
	DNSNamespace   = "kube-system"
	DNSServiceName = "kube-dns"
	DNSDeployment  = "coredns"
)

// DNSLabels are the labels of the cluster DNS pod (what allow-dns policies
// select).
func DNSLabels() map[string]string { return map[string]string{"k8s-app": "kube-dns"} }

// DNSPodSpec is the cluster DNS pod.
func DNSPodSpec() PodSpec {
	hash := templateHashOf("bulwark-cluster-dns-v1")
	return PodSpec{
		Namespace: DNSNamespace, Name: ReplicaPodName(DNSDeployment, hash, 0),
		Labels:          map[string]string{"k8s-app": "kube-dns", "pod-template-hash": hash},
		OwnerDeployment: DNSDeployment,
		Role:            RoleDNS,
		Ports: []ContainerPort{
			{Name: "dns", Port: 53, Protocol: "UDP", Kind: PortUDP},
			{Name: "dns-tcp", Port: 53, Protocol: "TCP", Kind: PortTCP},
		},
	}
}

// dnsServiceSpec is the kube-dns Service at the 10th service address.
func (n *Node) dnsServiceSpec() ServiceSpec {
	return ServiceSpec{
		Namespace: DNSNamespace, Name: DNSServiceName, Selector: DNSLabels(),
		ClusterIP: n.st.DNSServiceIP.String(),
		Ports: []ServicePort{
			{Name: "dns", Protocol: "UDP", Port: 53, TargetPort: "dns"},
			{Name: "dns-tcp", Protocol: "TCP", Port: 53, TargetPort: "dns-tcp"},
		},
	}
}

func (n *Node) dnsRecordsFile() string {
	return filepath.Join(StateDir(n.opts.StateRoot, n.opts.Instance), "dns", "records.json")
}

// EnsureClusterDNS creates the cluster DNS pod and the kube-dns Service if
// they are missing (New does this unless Options.NoClusterDNS; an agent
// that sets NoClusterDNS calls it once its datapath is ready).
func (n *Node) EnsureClusterDNS() (PodInfo, error) { return n.ensureClusterDNS() }

func (n *Node) ensureClusterDNS() (PodInfo, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.writeDNSRecords(); err != nil {
		return PodInfo{}, err
	}
	spec := DNSPodSpec()
	if err := validatePodSpec(&spec); err != nil {
		return PodInfo{}, err
	}
	p, err := n.addPodLocked(spec)
	if err != nil {
		return PodInfo{}, err
	}
	if n.findServiceSpec(DNSNamespace, DNSServiceName) < 0 {
		n.st.ServiceSpecs = append(n.st.ServiceSpecs, n.dnsServiceSpec())
		if err := n.reprogramServices(); err != nil {
			return PodInfo{}, err
		}
	}
	return p, nil
}

// hasClusterDNS reports whether the cluster DNS pod exists.
func (n *Node) hasClusterDNS() bool {
	for _, p := range n.st.Pods {
		if p.Role == RoleDNS {
			return true
		}
	}
	return false
}

func (n *Node) findServiceSpec(namespace, name string) int {
	for i, s := range n.st.ServiceSpecs {
		if s.Namespace == namespace && s.Name == name {
			return i
		}
	}
	return -1
}

func validateServiceSpec(s *ServiceSpec, svcCIDR netip.Prefix) error {
	obj := "service " + s.Namespace + "/" + s.Name
	if !dnsLabelRE.MatchString(s.Namespace) {
		return fmt.Errorf("%s: metadata.namespace %q is not a DNS label", obj, s.Namespace)
	}
	if !dnsLabelRE.MatchString(s.Name) {
		return fmt.Errorf("%s: metadata.name %q is not a DNS label", obj, s.Name)
	}
	if s.ClusterIP != "" && s.ClusterIP != "None" {
		ip, err := netip.ParseAddr(s.ClusterIP)
		if err != nil || !svcCIDR.Contains(ip) {
			return fmt.Errorf("%s: spec.clusterIP %q is not an address in the service range %v", obj, s.ClusterIP, svcCIDR)
		}
	}
	if s.ClusterIP == "None" {
		return fmt.Errorf("%s: spec.clusterIP None (headless) is not supported by the sandbox", obj)
	}
	if len(s.Ports) == 0 {
		return fmt.Errorf("%s: spec.ports: at least one port is required", obj)
	}
	seen := map[string]bool{}
	for i := range s.Ports {
		p := &s.Ports[i]
		field := fmt.Sprintf("%s: spec.ports[%d]", obj, i)
		if p.Protocol == "" {
			p.Protocol = "TCP"
		}
		if p.Protocol != "TCP" && p.Protocol != "UDP" {
			return fmt.Errorf("%s.protocol %q: TCP or UDP", field, p.Protocol)
		}
		if p.Port < 1 || p.Port > 65535 {
			return fmt.Errorf("%s.port %d: must be 1-65535", field, p.Port)
		}
		if p.TargetPort != "" {
			if v, err := strconv.Atoi(p.TargetPort); err == nil && (v < 1 || v > 65535) {
				return fmt.Errorf("%s.targetPort %d: must be 1-65535", field, v)
			}
		}
		k := fmt.Sprintf("%s/%d", p.Protocol, p.Port)
		if seen[k] {
			return fmt.Errorf("%s: %s listed twice", field, k)
		}
		seen[k] = true
	}
	return nil
}

// SetServices makes the node's services exactly specs (plus kube-dns while
// the cluster DNS pod exists): ClusterIPs are allocated (kept across calls and restarts),
// backends are the running pods of the same namespace matching the
// selector, translation and DNS records are rewritten. All specs are
// validated before anything changes. Backends follow pods automatically on
// AddPod/RemovePod.
func (n *Node) SetServices(specs []ServiceSpec) ([]ServiceInfo, error) {
	specs = append([]ServiceSpec(nil), specs...)
	seen := map[string]bool{}
	for i := range specs {
		if err := validateServiceSpec(&specs[i], n.st.ServiceCIDR); err != nil {
			return nil, err
		}
		k := specs[i].Namespace + "/" + specs[i].Name
		if seen[k] {
			return nil, fmt.Errorf("service %s listed twice", k)
		}
		seen[k] = true
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	withDNS := n.hasClusterDNS()
	if withDNS && !seen[DNSNamespace+"/"+DNSServiceName] {
		specs = append(specs, n.dnsServiceSpec())
	}
	// Claim requested addresses first so allocation cannot take them; on
	// failure, addresses this call assigned are returned.
	before := n.svcs.Owners()
	undo := func() {
		for owner := range n.svcs.Owners() {
			if _, had := before[owner]; !had {
				n.svcs.Release(owner)
			}
		}
	}
	for _, s := range specs {
		if s.ClusterIP != "" {
			if err := n.svcs.Claim(s.Namespace+"/"+s.Name, netip.MustParseAddr(s.ClusterIP)); err != nil {
				undo()
				return nil, fmt.Errorf("service %s/%s: spec.clusterIP: %w", s.Namespace, s.Name, err)
			}
		}
	}
	prev := n.st.ServiceSpecs
	n.st.ServiceSpecs = specs
	if err := n.reprogramServices(); err != nil {
		n.st.ServiceSpecs = prev
		undo()
		n.reprogramServices() // best effort: back to the previous tables
		return nil, err
	}
	for _, a := range []*ipam.Allocator{n.svcs, n.svcs6} {
		if a == nil {
			continue
		}
		for owner := range a.Owners() {
			if !seen[owner] && !(owner == DNSNamespace+"/"+DNSServiceName && withDNS) {
				a.Release(owner)
			}
		}
	}
	return append([]ServiceInfo(nil), n.st.Services...), nil
}

// reprogramServices recomputes every service's backends from the current
// pods and rewrites the translation maps, DNS records and state.
func (n *Node) reprogramServices() error {
	var infos []ServiceInfo
	var lbs []socklb.Service
	pods := sortedPods(n.st.Pods)
	for _, s := range n.st.ServiceSpecs {
		owner := s.Namespace + "/" + s.Name
		var ip netip.Addr
		if s.ClusterIP != "" {
			ip = netip.MustParseAddr(s.ClusterIP) // validated
			if err := n.svcs.Claim(owner, ip); err != nil {
				return fmt.Errorf("service %s: spec.clusterIP: %w", owner, err)
			}
		} else {
			var err error
			if ip, err = n.svcs.Allocate(owner); err != nil {
				return fmt.Errorf("service %s: allocate ClusterIP: %w", owner, err)
			}
		}
		info := ServiceInfo{Namespace: s.Namespace, Name: s.Name, Selector: s.Selector, ClusterIP: ip, ClusterIPs: []netip.Addr{ip}}
		if n.svcs6 != nil {
			ip6, err := n.allocateClusterIP6(s)
			if err != nil {
				return err
			}
			info.ClusterIPs = append(info.ClusterIPs, ip6)
		}
		for _, sp := range s.Ports {
			pi := ServicePortInfo{ServicePort: sp, Backends: []Backend{}}
			proto := socklb.TCP
			if sp.Protocol == "UDP" {
				proto = socklb.UDP
			}
			// One frontend per family, each with the backends of its family.
			fronts := make([]socklb.Service, len(info.ClusterIPs))
			for i, cip := range info.ClusterIPs {
				fronts[i] = socklb.Service{Frontend: netip.AddrPortFrom(cip, uint16(sp.Port)), Proto: proto}
			}
			for _, p := range pods {
				if p.Namespace != s.Namespace || len(s.Selector) == 0 || !labelsMatch(s.Selector, p.Labels) || !p.Running() {
					continue
				}
				port, ok := resolveTargetPort(sp, p)
				if !ok {
					continue
				}
				for _, pip := range p.IPs {
					ap := netip.AddrPortFrom(pip, uint16(port))
					pi.Backends = append(pi.Backends, Backend{Pod: p.Key(), Addr: ap})
					for i := range fronts {
						if fronts[i].Frontend.Addr().Is4() == pip.Is4() {
							fronts[i].Backends = append(fronts[i].Backends, ap)
						}
					}
				}
			}
			info.Ports = append(info.Ports, pi)
			lbs = append(lbs, fronts...)
		}
		infos = append(infos, info)
	}
	if n.lb == nil {
		return fmt.Errorf("node %s is closed", n.opts.Instance)
	}
	if err := n.lb.SetServices(lbs); err != nil {
		return fmt.Errorf("program service translation: %w", err)
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Key() < infos[j].Key() })
	n.st.Services = infos
	if err := n.writeDNSRecords(); err != nil {
		return err
	}
	return n.save()
}

// allocateClusterIP6 gives a service its IPv6 ClusterIP; kube-dns gets the
// 10th address of the IPv6 service range, like its IPv4 one.
func (n *Node) allocateClusterIP6(s ServiceSpec) (netip.Addr, error) {
	owner := s.Namespace + "/" + s.Name
	if s.Namespace == DNSNamespace && s.Name == DNSServiceName {
		ip := nthAddr(n.st.ServiceCIDR6, 10)
		if err := n.svcs6.Claim(owner, ip); err != nil {
			return netip.Addr{}, fmt.Errorf("service %s: IPv6 ClusterIP: %w", owner, err)
		}
		return ip, nil
	}
	ip, err := n.svcs6.Allocate(owner)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("service %s: allocate IPv6 ClusterIP: %w", owner, err)
	}
	return ip, nil
}

func labelsMatch(selector, labels map[string]string) bool {
	for k, v := range selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// resolveTargetPort maps a service port to the pod's port: a number is
// used as is; a name must be a container port of the pod with the same
// protocol (pods without it are not backends, as in Kubernetes).
func resolveTargetPort(sp ServicePort, p PodInfo) (int, bool) {
	if sp.TargetPort == "" {
		return sp.Port, true
	}
	if v, err := strconv.Atoi(sp.TargetPort); err == nil {
		return v, true
	}
	for _, cp := range p.Ports {
		if cp.Name == sp.TargetPort && cp.Protocol == sp.Protocol {
			return cp.Port, true
		}
	}
	return 0, false
}

// writeDNSRecords publishes every service and world name.
func (n *Node) writeDNSRecords() error {
	recs := dns.Records{Names: map[string][]netip.Addr{}}
	for _, s := range n.st.Services {
		name := dns.ServiceName(s.Name, s.Namespace, n.st.ClusterDomain)
		recs.Names[name] = append([]netip.Addr(nil), s.ClusterIPs...)
		if len(s.ClusterIPs) == 0 {
			recs.Names[name] = []netip.Addr{s.ClusterIP}
		}
	}
	for _, w := range n.st.World {
		if zone, ok := strings.CutPrefix(w.Name, "*."); ok {
			if recs.Zones == nil {
				recs.Zones = map[string][]netip.Addr{}
			}
			recs.Zones[dns.Canonical(zone)] = append(recs.Zones[dns.Canonical(zone)], w.IP)
			continue
		}
		recs.Names[dns.Canonical(w.Name)] = append(recs.Names[dns.Canonical(w.Name)], w.IP)
	}
	if err := dns.WriteRecords(n.dnsRecordsFile(), recs); err != nil {
		return fmt.Errorf("write dns records: %w", err)
	}
	return nil
}
