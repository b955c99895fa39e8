package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/bulwark-net/bulwark/internal/sandbox"
	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
)

// sandboxConfig is how the agent builds the instance's sandbox beyond its
// name. It persists in the state directory so a restarted agent (after
// 'bulwark up' without flags, or after a reboot emptied the run directory)
// builds the same sandbox.
type sandboxConfig struct {
	IPv6  bool     `json:"ipv6,omitempty"`
	World []string `json:"world,omitempty"`
	// NoLocalDelivery: pod-to-pod traffic takes the node's stack.
	NoLocalDelivery bool `json:"noLocalDelivery,omitempty"`
	// DNSReject is how the DNS proxy answers denied queries: "refused"
	// (the default, as Cilium) or "nxdomain".
	DNSReject string `json:"dnsReject,omitempty"`
}

func sandboxConfigFile(p Paths) string { return filepath.Join(p.StateDir, "sandbox.json") }

// readSandboxConfig returns the persisted configuration; none is the zero
// configuration.
func readSandboxConfig(p Paths) (sandboxConfig, error) {
	var c sandboxConfig
	b, err := os.ReadFile(sandboxConfigFile(p))
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("read sandbox config: %w", err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%s: %w", sandboxConfigFile(p), err)
	}
	return c, nil
}

// wantedSandboxConfig merges the options of this start into the persisted
// configuration: IPv6 only ever turns on, World and LocalDelivery replace
// when given.
func wantedSandboxConfig(p Paths, o Options) (sandboxConfig, error) {
	c, err := readSandboxConfig(p)
	if err != nil {
		return c, err
	}
	c.IPv6 = c.IPv6 || o.IPv6
	if o.LocalDelivery != nil {
		c.NoLocalDelivery = !*o.LocalDelivery
	}
	if o.DNSReject != "" {
		if _, err := dnsRejectRcode(o.DNSReject); err != nil {
			return c, err
		}
		c.DNSReject = o.DNSReject
	}
	if o.World != nil {
		if c.World, err = sandbox.CleanWorldNames(o.World, ""); err != nil {
			return c, err
		}
	}
	return c, nil
}

func writeSandboxConfig(p Paths, c sandboxConfig) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(sandboxConfigFile(p), append(b, '\n')); err != nil {
		return fmt.Errorf("write sandbox config: %w", err)
	}
	return nil
}

// applyWorld makes the sandbox's world serve exactly names, leaving a
// world that already does untouched (SetWorld rebuilds the namespace).
func applyWorld(sb *sandbox.Node, names []string) error {
	st := sb.State()
	var have []string
	for _, h := range st.World {
		have = append(have, h.Name)
	}
	slices.Sort(have)
	if slices.Equal(have, names) && (len(names) == 0 || netns.Exists(st.WorldNetns)) {
		return nil
	}
	if _, err := sb.SetWorld(names); err != nil {
		return fmt.Errorf("world: %w", err)
	}
	return nil
}
