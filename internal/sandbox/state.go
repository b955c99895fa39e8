package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulwark-net/bulwark/internal/sandbox/ipam"
)

// StateVersion is the format version of state.json.
const StateVersion = 1

// Role says what a pod's workload process serves.
type Role string

const (
	// RoleWorkload serves the pod's declared ports (HTTP, TCP, UDP echo).
	RoleWorkload Role = "workload"
	// RoleDNS serves the cluster DNS on port 53.
	RoleDNS Role = "dns"
)

// PortKind is how the workload serves a TCP/UDP port.
type PortKind string

const (
	PortHTTP PortKind = "http" // TCP, answers HTTP with pod name, method, path
	PortTCP  PortKind = "tcp"  // TCP, accepts, writes a banner, holds the connection
	PortUDP  PortKind = "udp"  // UDP echo
)

// ContainerPort is one declared container port of a pod.
type ContainerPort struct {
	Name     string   `json:"name,omitempty"`
	Port     int      `json:"port"`
	Protocol string   `json:"protocol"` // "TCP" or "UDP"
	Kind     PortKind `json:"kind"`     // filled by AddPod when empty (see PortKindFor)
}

// PodSpec describes a pod to create.
type PodSpec struct {
	Namespace       string
	Name            string
	Labels          map[string]string
	Ports           []ContainerPort
	OwnerDeployment string // "" for a bare pod
	Role            Role   // default RoleWorkload
}

// PodInfo is a pod as it exists on the node; it is also the pod record in
// state.json.
type PodInfo struct {
	Namespace       string            `json:"namespace"`
	Name            string            `json:"name"`
	Labels          map[string]string `json:"labels,omitempty"`
	OwnerDeployment string            `json:"ownerDeployment,omitempty"`
	Role            Role              `json:"role"`
	Ports           []ContainerPort   `json:"ports,omitempty"`
	Netns           string            `json:"netns"`     // name under /run/netns
	NetnsPath       string            `json:"netnsPath"` // /run/netns/<netns>
	IPs             []netip.Addr      `json:"ips"`
	HostIfName      string            `json:"hostIfName"`  // node-side veth, in the node netns
	HostIfIndex     int               `json:"hostIfIndex"` // its ifindex in the node netns
	HostIfMAC       string            `json:"hostIfMAC"`
	PodIfMAC        string            `json:"podIfMAC"`
	ResolvConf      string            `json:"resolvConf"` // file bound over /etc/resolv.conf for exec
	PID             int               `json:"pid,omitempty"`
	PIDStartTime    uint64            `json:"pidStartTime,omitempty"`
	Created         time.Time         `json:"created"` // when its network was made
}

// Key is "namespace/name".
func (p PodInfo) Key() string { return p.Namespace + "/" + p.Name }

// Running reports whether the pod's workload process is alive.
func (p PodInfo) Running() bool { return processAlive(p.PID, p.PIDStartTime) }

// ServicePort is one port of a Service.
type ServicePort struct {
	Name     string `json:"name,omitempty"`
	Protocol string `json:"protocol"` // "TCP" (default) or "UDP"
	Port     int    `json:"port"`
	// TargetPort is a number ("8080") or a container port name ("http");
	// empty means Port.
	TargetPort string `json:"targetPort,omitempty"`
}

// ServiceSpec describes a ClusterIP Service.
type ServiceSpec struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Selector  map[string]string `json:"selector,omitempty"` // empty selects no pods (like Kubernetes)
	Ports     []ServicePort     `json:"ports"`
	// ClusterIP requests a specific address inside the service range;
	// empty allocates one.
	ClusterIP string `json:"clusterIP,omitempty"`
}

// Backend is one resolved backend of a service port.
type Backend struct {
	Pod  string         `json:"pod"` // namespace/name
	Addr netip.AddrPort `json:"addr"`
}

// ServicePortInfo is a service port with its backends.
type ServicePortInfo struct {
	ServicePort
	Backends []Backend `json:"backends"`
}

// ServiceInfo is a Service as programmed on the node; also its record in
// state.json.
type ServiceInfo struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Selector  map[string]string `json:"selector,omitempty"`
	ClusterIP netip.Addr        `json:"clusterIP"`
	// ClusterIPs lists every family's address, ClusterIP first.
	ClusterIPs []netip.Addr      `json:"clusterIPs"`
	Ports      []ServicePortInfo `json:"ports"`
}

// Key is "namespace/name".
func (s ServiceInfo) Key() string { return s.Namespace + "/" + s.Name }

// WorldHost is a name of the simulated outside world and its address.
type WorldHost struct {
	Name string     `json:"name"`
	IP   netip.Addr `json:"ip"`
}

// State is the content of state.json: everything needed to find, exec into
// and tear down an instance without a running agent.
type State struct {
	Version       int          `json:"version"`
	Instance      string       `json:"instance"`
	Index         int          `json:"index"` // selects the per-instance /24s
	ClusterDomain string       `json:"clusterDomain"`
	PodCIDR       netip.Prefix `json:"podCIDR"`
	ServiceCIDR   netip.Prefix `json:"serviceCIDR"`
	WorldCIDR     netip.Prefix `json:"worldCIDR"`
	NodeIP        netip.Addr   `json:"nodeIP"` // the node namespace's address in PodCIDR
	// IPv6 ranges, set only for instances created with Options.IPv6.
	PodCIDR6     netip.Prefix `json:"podCIDR6,omitzero"`
	ServiceCIDR6 netip.Prefix `json:"serviceCIDR6,omitzero"`
	NodeIP6      netip.Addr   `json:"nodeIP6,omitzero"`
	Gateway      netip.Addr   `json:"gateway"`
	DNSServiceIP netip.Addr   `json:"dnsServiceIP"`
	NodeNetns    string       `json:"nodeNetns"`
	WorldNetns   string       `json:"worldNetns,omitempty"`
	CgroupPath   string       `json:"cgroupPath"`
	BPFFSDir     string       `json:"bpffsDir"`
	// ServiceSpecs are the services the agent asked for (backends are
	// recomputed from them whenever pods change).
	ServiceSpecs []ServiceSpec `json:"serviceSpecs,omitempty"`
	Pods         []PodInfo     `json:"pods"`
	Services     []ServiceInfo `json:"services"`
	World        []WorldHost   `json:"world,omitempty"`
	WorldPID     int           `json:"worldPID,omitempty"`
	WorldPIDTime uint64        `json:"worldPIDStartTime,omitempty"`
}

// ReadState loads an instance's state.json.
func ReadState(stateRoot, instance string) (*State, error) {
	file := StateFile(stateRoot, instance)
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("sandbox instance %q does not exist (no %s)", instance, file)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("parse %s: %w", file, err)
	}
	if s.Version != StateVersion {
		return nil, fmt.Errorf("%s: state version %d, this binary reads %d", file, s.Version, StateVersion)
	}
	return &s, nil
}

func writeState(stateRoot string, s *State) error {
	sort.Slice(s.Pods, func(i, j int) bool { return s.Pods[i].Key() < s.Pods[j].Key() })
	sort.Slice(s.Services, func(i, j int) bool { return s.Services[i].Key() < s.Services[j].Key() })
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	return ipam.WriteFileAtomic(StateFile(stateRoot, s.Instance), b)
}

// FindPod returns the pod namespace/name, or for "deploy/NAME" (also
// "deployment/NAME") a running pod of that deployment (the first by name).
func (s *State) FindPod(namespace, target string) (PodInfo, error) {
	if namespace == "" {
		namespace = "default"
	}
	kind, name := "", target
	if i := strings.IndexByte(target, '/'); i >= 0 {
		kind, name = target[:i], target[i+1:]
	}
	switch kind {
	case "", "pod", "pods", "po":
		for _, p := range s.Pods {
			if p.Namespace == namespace && p.Name == name {
				return p, nil
			}
		}
		return PodInfo{}, fmt.Errorf("pod %s/%s not found in sandbox %q", namespace, name, s.Instance)
	case "deploy", "deployment", "deployments":
		var found bool
		for _, p := range s.Pods {
			if p.Namespace == namespace && p.OwnerDeployment == name {
				found = true
				if p.Running() {
					return p, nil
				}
			}
		}
		if found {
			return PodInfo{}, fmt.Errorf("deployment %s/%s has no running pod", namespace, name)
		}
		return PodInfo{}, fmt.Errorf("deployment %s/%s not found in sandbox %q", namespace, name, s.Instance)
	default:
		return PodInfo{}, fmt.Errorf("%q: target must be POD, pod/NAME or deploy/NAME", target)
	}
}

// lockRoot takes an exclusive lock over all instances' range choices.
// The lock file may be unlinked by the last instance's teardown (see
// removeRootIfUnused): a lock taken on a file that is no longer the one at
// the path is retried, so two holders never coexist.
func lockRoot(stateRoot string) (func(), error) {
	path := filepath.Join(stateRoot, ".lock")
	for {
		if err := os.MkdirAll(stateRoot, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", stateRoot, err)
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return nil, fmt.Errorf("open lock: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		var held, now unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(path, &now) == nil &&
			held.Dev == now.Dev && held.Ino == now.Ino {
			return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
		}
		f.Close() // unlinked under us: take the new one
	}
}

// removeRootIfUnused removes the state root (and its lock file) once no
// instance is left in it, so the last teardown leaves the host as found.
func removeRootIfUnused(stateRoot string) {
	if _, err := os.Stat(stateRoot); err != nil {
		return
	}
	unlock, err := lockRoot(stateRoot)
	if err != nil {
		return
	}
	defer unlock()
	ents, err := os.ReadDir(stateRoot)
	if err != nil {
		return
	}
	for _, e := range ents {
		if e.Name() != ".lock" {
			return
		}
	}
	_ = os.Remove(filepath.Join(stateRoot, ".lock"))
	_ = os.Remove(stateRoot)
}

// otherStates reads every other instance's state (unreadable ones skipped).
func otherStates(stateRoot, self string) []*State {
	ents, _ := os.ReadDir(stateRoot)
	var out []*State
	for _, e := range ents {
		if !e.IsDir() || e.Name() == self {
			continue
		}
		if s, err := ReadState(stateRoot, e.Name()); err == nil {
			out = append(out, s)
		}
	}
	return out
}

func nthPrefix(base netip.Prefix, index int) netip.Prefix {
	a := base.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(index) << 8
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 24)
}

// nthAddr returns the n-th address of p (n small).
func nthAddr(p netip.Prefix, n int) netip.Addr {
	if p.Addr().Is6() {
		a := p.Masked().Addr().As16()
		v := uint32(a[12])<<24 | uint32(a[13])<<16 | uint32(a[14])<<8 | uint32(a[15])
		v += uint32(n)
		a[12], a[13], a[14], a[15] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
		return netip.AddrFrom16(a)
	}
	a := p.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

var (
	podBase   = netip.MustParsePrefix("10.244.0.0/16")
	svcBase   = netip.MustParsePrefix("10.96.0.0/16")
	worldBase = netip.MustParsePrefix("198.18.0.0/15")
)

// chooseRanges fixes a new instance's ranges so they overlap no other
// instance's. Called with the root lock held.
func chooseRanges(o Options, others []*State) (State, error) {
	overlaps := func(p netip.Prefix) string {
		for _, s := range others {
			for _, q := range []netip.Prefix{s.PodCIDR, s.ServiceCIDR, s.WorldCIDR} {
				if q.IsValid() && p.Overlaps(q) {
					return s.Instance
				}
			}
		}
		return ""
	}
	usedIdx := map[int]bool{}
	for _, s := range others {
		usedIdx[s.Index] = true
	}
	start := 0
	if o.Instance != DefaultInstance {
		start = 1 + int(fnvSum(o.Instance)%255)
	}
	for i := 0; i < 256; i++ {
		idx := (start + i) % 256
		if usedIdx[idx] {
			continue
		}
		st := State{Index: idx, PodCIDR: o.PodCIDR, ServiceCIDR: o.ServiceCIDR, WorldCIDR: o.WorldCIDR}
		if !st.PodCIDR.IsValid() {
			st.PodCIDR = nthPrefix(podBase, idx)
		}
		if !st.ServiceCIDR.IsValid() {
			st.ServiceCIDR = nthPrefix(svcBase, idx)
		}
		if !st.WorldCIDR.IsValid() {
			st.WorldCIDR = nthPrefix(worldBase, idx)
		}
		clash := false
		for name, p := range map[string]netip.Prefix{"PodCIDR": st.PodCIDR, "ServiceCIDR": st.ServiceCIDR, "WorldCIDR": st.WorldCIDR} {
			if err := validatePrefix4(name, p, 28); err != nil {
				return State{}, err
			}
			if other := overlaps(p); other != "" {
				if (name == "PodCIDR" && o.PodCIDR.IsValid()) || (name == "ServiceCIDR" && o.ServiceCIDR.IsValid()) || (name == "WorldCIDR" && o.WorldCIDR.IsValid()) {
					return State{}, fmt.Errorf("%s %v overlaps a range of sandbox instance %q", name, p, other)
				}
				clash = true
			}
		}
		if st.PodCIDR.Overlaps(st.ServiceCIDR) || st.PodCIDR.Overlaps(st.WorldCIDR) || st.ServiceCIDR.Overlaps(st.WorldCIDR) {
			return State{}, fmt.Errorf("PodCIDR %v, ServiceCIDR %v and WorldCIDR %v must not overlap", st.PodCIDR, st.ServiceCIDR, st.WorldCIDR)
		}
		if !clash {
			if o.IPv6 {
				st.PodCIDR6 = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0x62, 0x77, 0x6b, 0, 0, 0, byte(idx)}), 64)
				st.ServiceCIDR6 = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0x62, 0x77, 0x6b, 0, 1, 0, byte(idx)}), 112)
			}
			return st, nil
		}
	}
	return State{}, errors.New("no free address ranges left for another sandbox instance")
}

func fnvSum(s string) uint32 {
	var h uint32 = 2166136261
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}
