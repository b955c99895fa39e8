package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// PluginType is the "type" of the plugin in a CNI configuration: the name
// of its binary in the runtime's CNI bin directory.
const PluginType = "bulwark-cni"

// The two modes of the plugin.
const (
	// ModeStandalone: the plugin creates the pod's veth pair and delegates
	// address allocation to its IPAM plugin (host-local).
	ModeStandalone = "standalone"
	// ModeChained: a primary plugin (ptp or bridge) ran before and created
	// the interface; the plugin only attaches the endpoint.
	ModeChained = "chained"
)

// Defaults the agent and the plugin agree on.
const (
	DefaultNetworkName = "bulwark"
	DefaultAgentSocket = "/run/bulwark/k8s/agent.sock"
	// DefaultIPAMDataDir keeps host-local's reservations under Bulwark's
	// node-private state directory, so nodes sharing one machine (each its
	// own mount namespace over /var/lib/bulwark) never share a store.
	DefaultIPAMDataDir = "/var/lib/bulwark/cni/ipam"
	// ConfVersion is the CNI spec version of the configuration ConfList
	// writes; the plugin also accepts 1.0.0.
	ConfVersion = "1.1.0"
)

// supported lists the CNI spec versions the plugin speaks (VERSION).
var supported = version.PluginSupports("1.0.0", "1.1.0")

// NetConf is the plugin's configuration, as the runtime passes it on stdin.
type NetConf struct {
	types.PluginConf
	// Mode is ModeStandalone (the default when empty) or ModeChained.
	Mode string `json:"mode,omitempty"`
	// AgentSocket is the node agent's unix socket.
	AgentSocket string `json:"agentSocket"`
	// MTU of both ends of the veth pair in standalone mode; 0 keeps the
	// kernel's default (1500).
	MTU int `json:"mtu,omitempty"`
}

// parseConf decodes and validates the plugin's configuration. Errors name
// the field.
func parseConf(stdin []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, fmt.Errorf("bulwark-cni: decode network configuration: %w", err)
	}
	if conf.Mode == "" {
		conf.Mode = ModeStandalone
	}
	if err := conf.validate(); err != nil {
		name := conf.Name
		if name == "" {
			name = "(unnamed)"
		}
		return nil, fmt.Errorf("bulwark-cni: network %s: %w", name, err)
	}
	return conf, nil
}

func (c *NetConf) validate() error {
	switch c.Mode {
	case ModeStandalone:
		if c.IPAM.Type == "" {
			return errors.New(`field "ipam": standalone mode needs an IPAM plugin (e.g. {"type":"host-local",...})`)
		}
	case ModeChained:
		if c.IPAM.Type != "" {
			return errors.New(`field "ipam": chained mode allocates no address (the primary plugin before it does); remove "ipam"`)
		}
	default:
		return fmt.Errorf(`field "mode": %q is neither %q nor %q`, c.Mode, ModeStandalone, ModeChained)
	}
	if c.AgentSocket == "" {
		return errors.New(`field "agentSocket": missing (the node agent's unix socket, e.g. ` + DefaultAgentSocket + `)`)
	}
	if !filepath.IsAbs(c.AgentSocket) {
		return fmt.Errorf(`field "agentSocket": %q is not an absolute path`, c.AgentSocket)
	}
	if c.MTU < 0 || c.MTU > 65535 || (c.MTU > 0 && c.MTU < 68) {
		return fmt.Errorf(`field "mtu": %d is not a valid MTU (68..65535, or 0 for the default)`, c.MTU)
	}
	return nil
}

// ConfOptions describes the network configuration the agent installs.
type ConfOptions struct {
	// Name of the network (default DefaultNetworkName).
	Name string
	// Mode is ModeStandalone (default) or ModeChained.
	Mode string
	// PodCIDRs are the node's pod CIDRs (Node.spec.podCIDRs): one IPv4
	// and/or one IPv6 prefix. host-local allocates from them.
	PodCIDRs []netip.Prefix
	// AgentSocket is the agent's unix socket (default DefaultAgentSocket).
	AgentSocket string
	// MTU of the pod interfaces (0: the kernel's default).
	MTU int
	// IPAMDataDir is where host-local keeps its reservations (default
	// DefaultIPAMDataDir).
	IPAMDataDir string
}

// ConfList returns the CNI network configuration list (a .conflist file)
// for opts. Standalone: bulwark-cni alone, with host-local IPAM over the pod
// CIDRs. Chained: ptp with host-local, then bulwark-cni. No loopback entry:
// CRI runtimes (containerd, CRI-O) bring the pod's lo up themselves, and no
// portmap: Bulwark does not implement hostPort.
func ConfList(opts ConfOptions) ([]byte, error) {
	if opts.Name == "" {
		opts.Name = DefaultNetworkName
	}
	if opts.Mode == "" {
		opts.Mode = ModeStandalone
	}
	if opts.AgentSocket == "" {
		opts.AgentSocket = DefaultAgentSocket
	}
	if opts.IPAMDataDir == "" {
		opts.IPAMDataDir = DefaultIPAMDataDir
	}
	ipam, err := hostLocal(opts.PodCIDRs, opts.IPAMDataDir)
	if err != nil {
		return nil, fmt.Errorf("cni conflist %s: %w", opts.Name, err)
	}
	bulwark := map[string]any{
		"type":        PluginType,
		"mode":        opts.Mode,
		"agentSocket": opts.AgentSocket,
	}
	var plugins []any
	switch opts.Mode {
	case ModeStandalone:
		bulwark["ipam"] = ipam
		if opts.MTU > 0 {
			bulwark["mtu"] = opts.MTU
		}
		plugins = []any{bulwark}
	case ModeChained:
		ptp := map[string]any{"type": "ptp", "ipMasq": false, "ipam": ipam}
		if opts.MTU > 0 {
			ptp["mtu"] = opts.MTU
		}
		plugins = []any{ptp, bulwark}
	default:
		return nil, fmt.Errorf("cni conflist %s: mode %q is neither %q nor %q", opts.Name, opts.Mode, ModeStandalone, ModeChained)
	}
	// Validate what the plugin will read, so the agent never installs a
	// configuration every ADD would refuse.
	raw, err := json.Marshal(bulwark)
	if err != nil {
		return nil, err
	}
	var check NetConf
	if err := json.Unmarshal(raw, &check); err != nil {
		return nil, err
	}
	check.Name = opts.Name
	if err := check.validate(); err != nil {
		return nil, fmt.Errorf("cni conflist %s: %w", opts.Name, err)
	}
	return json.MarshalIndent(map[string]any{
		"cniVersion": ConfVersion,
		"name":       opts.Name,
		"plugins":    plugins,
	}, "", "  ")
}

// hostLocal returns host-local's configuration over the pod CIDRs: one
// range set and one default route per address family.
func hostLocal(cidrs []netip.Prefix, dataDir string) (map[string]any, error) {
	if len(cidrs) == 0 {
		return nil, errors.New("no pod CIDR (the node's spec.podCIDRs is empty)")
	}
	var v4, v6 int
	var ranges [][]map[string]string
	var routes []map[string]string
	for _, p := range cidrs {
		if !p.IsValid() {
			return nil, errors.New("invalid pod CIDR")
		}
		if p != p.Masked() {
			return nil, fmt.Errorf("pod CIDR %s has host bits set", p)
		}
		bits := p.Addr().BitLen()
		if bits-p.Bits() < 2 {
			return nil, fmt.Errorf("pod CIDR %s is too small for pods", p)
		}
		if p.Addr().Is4() {
			v4++
			routes = append(routes, map[string]string{"dst": "0.0.0.0/0"})
		} else {
			v6++
			routes = append(routes, map[string]string{"dst": "::/0"})
		}
		ranges = append(ranges, []map[string]string{{"subnet": p.String()}})
	}
	if v4 > 1 || v6 > 1 {
		return nil, fmt.Errorf("pod CIDRs %v: at most one per address family", cidrs)
	}
	// The default routes matter in chained mode (ptp installs them via its
	// gateway); standalone routes them via its link-local gateways.
	return map[string]any{"type": "host-local", "ranges": ranges, "routes": routes, "dataDir": dataDir}, nil
}
