package datapath

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// Sizes are the capacities of the datapath's maps. Zero fields take the
// defaults of DefaultSizes. Changing a size of an existing pinned map makes
// Open fail: pins are adopted only when their layout matches.
type Sizes struct {
	Endpoints         uint32 // local endpoints (host-veth ifindex records)
	IPCache           uint32 // IP prefixes with a known identity
	IdentitySelectors uint32 // identities with a selector list
	Policy            uint32 // policy LPM entries, all endpoints, both buffers
	Conntrack         uint32 // tracked flows (LRU)
	EventsBytes       uint32 // ring buffer size, a power of two ≥ page size
}

// DefaultSizes fit 100k identities and 1k policies on a node.
var DefaultSizes = Sizes{
	Endpoints:         1024,
	IPCache:           262144,
	IdentitySelectors: 262144,
	Policy:            262144,
	Conntrack:         262144,
	EventsBytes:       1 << 20,
}

func (s Sizes) withDefaults() Sizes {
	d := DefaultSizes
	if s.Endpoints != 0 {
		d.Endpoints = s.Endpoints
	}
	if s.IPCache != 0 {
		d.IPCache = s.IPCache
	}
	if s.IdentitySelectors != 0 {
		d.IdentitySelectors = s.IdentitySelectors
	}
	if s.Policy != 0 {
		d.Policy = s.Policy
	}
	if s.Conntrack != 0 {
		d.Conntrack = s.Conntrack
	}
	if s.EventsBytes != 0 {
		d.EventsBytes = s.EventsBytes
	}
	return d
}

// Options configure Open.
type Options struct {
	// PinDir is the bpffs directory holding this instance's maps and links,
	// e.g. /sys/fs/bpf/bulwark-<instance>. Required.
	PinDir string
	Sizes  Sizes
	// ConntrackGCInterval is how often expired conntrack entries are
	// deleted; 0 = 30s, negative = no background GC (call GCConntrack).
	ConntrackGCInterval time.Duration
	// ForceLegacyTC attaches with clsact + cls_bpf even when TCX works.
	ForceLegacyTC bool
	// DisableLocalDelivery sends pod-to-pod packets through the node's IP
	// stack and the destination's own hook. By default the source pod's
	// program decides the destination's ingress too and hands the packet
	// to the destination pod directly (bpf_redirect_peer), which skips the
	// node's routing and netfilter for that traffic.
	DisableLocalDelivery bool
}

// Endpoint is a local pod interface to enforce on.
type Endpoint struct {
	ID uint32
	// IfIndex of the host-side veth, in the namespace NetNSPath.
	IfIndex int
	// NetNSPath is where the host-side veth lives; "" = the caller's.
	NetNSPath string
	Identity  identity.NumericIdentity
}

// ProxyPortFunc gives the proxy port of a Redirect entry.
type ProxyPortFunc func(endpointID uint32, dir resolved.Direction, e *resolved.Entry) uint16

// State is the desired content of the datapath.
type State struct {
	// Endpoints maps an endpoint ID to its resolved policy. An attached
	// endpoint without a policy here is not ready: it drops everything.
	Endpoints map[uint32]*resolved.EndpointPolicy
	Selectors resolved.SelectorSet
	IPCache   map[netip.Prefix]identity.NumericIdentity
	Revision  uint64
	// ProxyPort resolves Redirect entries; nil = port 0.
	ProxyPort ProxyPortFunc
}

func (o Options) validate() error {
	if o.PinDir == "" {
		return fmt.Errorf("datapath options: PinDir is required")
	}
	return nil
}
