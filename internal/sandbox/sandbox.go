// Package sandbox is the local node of a Bulwark sandbox: one network
// namespace per instance acting as the node, one namespace per pod joined
// to it by a veth pair, a workload process per pod, ClusterIP services
// translated at the socket level, a cluster DNS pod, an optional simulated
// outside world, and `exec` into pods.
//
// Invariants:
//   - The host's own network namespace is never configured: every link,
//     route, address and sysctl lives in a namespace named bwk-<instance>-*.
//   - Pods have routes to the pod, service and world ranges of their
//     instance only, never a default route.
//   - Each instance has disjoint address ranges, its own cgroup
//     (<cgroup2>/bulwark-<instance>) and bpffs directory, and a state
//     directory (/run/bulwark/<instance>) from which Teardown can remove
//     everything without a running agent.
package sandbox

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
)

// Defaults.
const (
	DefaultInstance      = "default"
	DefaultStateRoot     = "/run/bulwark"
	DefaultBPFFSRoot     = "/sys/fs/bpf/bulwark"
	DefaultClusterDomain = "cluster.local"
)

// Gateway (IPv4) and Gateway6 are the link-local addresses every pod uses
// as next hop; each is resolved by a permanent neighbour entry to the
// node-side veth, so no ARP/NDP is needed in either direction.
var (
	Gateway  = netip.MustParseAddr("169.254.1.1")
	Gateway6 = netip.MustParseAddr("fe80::1")
)

// Options configure a sandbox instance. Zero values select defaults.
type Options struct {
	// Instance names the sandbox: lower-case letters, digits and '-', at
	// most 20 characters. Default "default".
	Instance string
	// StateRoot holds one directory per instance. Default /run/bulwark.
	StateRoot string
	// BPFFSRoot holds one pin directory per instance. Default /sys/fs/bpf/bulwark.
	BPFFSRoot string
	// PodCIDR, ServiceCIDR, WorldCIDR default to a /24 per instance out of
	// 10.244.0.0/16, 10.96.0.0/16 and 198.18.0.0/15 (the benchmarking
	// range, never routed on the Internet). They are fixed when the
	// instance is first created.
	PodCIDR, ServiceCIDR, WorldCIDR netip.Prefix
	// IPv6 adds an IPv6 address to every pod and an IPv6 ClusterIP to every
	// Service (dual stack; IPv4 stays primary). Fixed when the instance is
	// first created. Ranges: a /64 per instance out of fd62:776b::/48 for
	// pods and a /112 out of fd62:776b:1::/48 for services (ULA, "bwk").
	IPv6 bool
	// ClusterDomain defaults to cluster.local.
	ClusterDomain string
	// Executable is the binary started for workloads (with the hidden
	// subcommand workload.Command). Default: this process's executable.
	Executable string
	// NoClusterDNS skips creating the kube-system/coredns pod and the
	// kube-dns Service.
	NoClusterDNS bool
	// BeforeUp, if set, runs for every new pod (including a pod rebuilt
	// because its namespace vanished, and the cluster DNS pod) at the one
	// point where enforcement can be attached before any packet crosses
	// the pod's veth. When it runs:
	//   - exist: the pod namespace (NetnsPath), the veth pair (HostIfName,
	//     HostIfIndex, HostIfMAC in the node namespace; eth0, PodIfMAC in
	//     the pod) and, inside the pod, its addresses (IPs), gateway
	//     neighbour and routes; ResolvConf is written;
	//   - do not exist yet: the node side is administratively down (no
	//     carrier: nothing crosses the veth either way), the node has no
	//     route or neighbour entry for the pod's IPs, and no workload
	//     process runs (PID is 0). The pod is not yet in Pods().
	// After it returns nil the node side goes up, the node routes to the
	// pod, and the workload starts. An error aborts AddPod and removes
	// the pod; the hook must undo its own work in that case. It runs with
	// the Node's lock held: it must not call the Node's methods.
	BeforeUp func(PodInfo) error
}

var instanceRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$`)

func (o Options) withDefaults() (Options, error) {
	if o.Instance == "" {
		o.Instance = DefaultInstance
	}
	if !instanceRE.MatchString(o.Instance) {
		return o, fmt.Errorf("instance %q: use 1-20 lower-case letters, digits or '-'", o.Instance)
	}
	if o.StateRoot == "" {
		o.StateRoot = DefaultStateRoot
	}
	if o.BPFFSRoot == "" {
		o.BPFFSRoot = DefaultBPFFSRoot
	}
	if o.ClusterDomain == "" {
		o.ClusterDomain = DefaultClusterDomain
	}
	if o.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return o, fmt.Errorf("find own executable: %w", err)
		}
		o.Executable = exe
	}
	return o, nil
}

// Names derived from an instance.

// StateDir is the instance's state directory.
func StateDir(stateRoot, instance string) string {
	if stateRoot == "" {
		stateRoot = DefaultStateRoot
	}
	return filepath.Join(stateRoot, instance)
}

// StateFile is the JSON file describing the instance (see State).
func StateFile(stateRoot, instance string) string {
	return filepath.Join(StateDir(stateRoot, instance), "state.json")
}

func netnsPrefix(instance string) string { return "bwk-" + instance + "-" }

// NodeNetns is the name of the instance's node namespace.
func NodeNetns(instance string) string { return netnsPrefix(instance) + "node" }

// WorldNetns is the name of the instance's simulated-world namespace.
func WorldNetns(instance string) string { return netnsPrefix(instance) + "world" }

func shortHash(n int, parts ...string) string {
	h := fnv.New64a()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return fmt.Sprintf("%016x", h.Sum64())[:n]
}

// PodNetns is the namespace name of a pod.
func PodNetns(instance, namespace, name string) string {
	return netnsPrefix(instance) + shortHash(10, namespace, name)
}

// HostIfName is the node-side veth name of a pod (11 characters).
func HostIfName(instance, namespace, name string) string {
	return "bwk" + shortHash(8, instance, namespace, name)
}

// WorldHostIfName is the node-side veth of the world namespace.
const WorldHostIfName = "bwkworld"

// cgroupName is the instance's directory below the cgroup2 mount.
func cgroupName(instance string) string { return "bulwark-" + instance }

func validatePrefix4(field string, p netip.Prefix, maxBits int) error {
	if !p.IsValid() || !p.Addr().Is4() {
		return fmt.Errorf("%s %v: need an IPv4 prefix", field, p)
	}
	if p.Bits() > maxBits {
		return fmt.Errorf("%s %v: need at least a /%d", field, p, maxBits)
	}
	return nil
}

var errNotRoot = errors.New("the sandbox needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF)")
