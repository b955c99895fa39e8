package sandbox

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
	"github.com/bulwark-net/bulwark/internal/sandbox/workload"
)

// WorldPorts are the TCP ports every world host serves (HTTP on both; 443
// is plain HTTP, no TLS).
var WorldPorts = []int{80, 443}

// SetWorld makes the simulated outside world hold exactly names: each name
// gets an address in WorldCIDR (kept across calls), resolvable through the
// cluster DNS (a wildcard zone "*.zone": every name under zone resolves to
// the zone's address), answering HTTP on ports 80 and 443 from the namespace
// bwk-<instance>-world. The world is reachable only from the sandbox's pods
// (through the node) and routes only back to the pod range. An empty list
// removes the world.
func (n *Node) SetWorld(names []string) ([]WorldHost, error) {
	clean, err := CleanWorldNames(names, n.st.ClusterDomain)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, c := range clean {
		seen[c] = true
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(clean) == 0 {
		if err := n.removeWorldLocked(); err != nil {
			return nil, err
		}
		n.st.World = nil
		if err := n.writeDNSRecords(); err != nil {
			return nil, err
		}
		return nil, n.save()
	}
	var hosts []WorldHost
	for _, c := range clean {
		ip, err := n.world.Allocate(c)
		if err != nil {
			return nil, fmt.Errorf("world name %s: %w", c, err)
		}
		hosts = append(hosts, WorldHost{Name: c, IP: ip})
	}
	for owner := range n.world.Owners() {
		if !seen[owner] {
			n.world.Release(owner)
		}
	}
	// The world namespace is rebuilt whenever the set of names changes:
	// simple, and the world holds no state worth keeping.
	if err := n.removeWorldLocked(); err != nil {
		return nil, err
	}
	if err := n.buildWorldLocked(hosts); err != nil {
		n.removeWorldLocked()
		return nil, err
	}
	n.st.World = hosts
	if err := n.writeDNSRecords(); err != nil {
		return nil, err
	}
	return hosts, n.save()
}

// CleanWorldNames checks world host names (fully qualified DNS names, or
// wildcard zones "*.zone" whose every name the world answers; none under
// or above clusterDomain; "" means cluster.local) and returns them lower-cased,
// without a trailing dot, sorted and without duplicates: the set SetWorld
// would serve.
func CleanWorldNames(names []string, clusterDomain string) ([]string, error) {
	if clusterDomain == "" {
		clusterDomain = DefaultClusterDomain
	}
	seen := map[string]bool{}
	var clean []string
	for i, name := range names {
		c := strings.TrimSuffix(strings.ToLower(name), ".")
		// "*.zone" is a wildcard test zone: every name under zone.
		host := strings.TrimPrefix(c, "*.")
		if !dnsSubdomainRE.MatchString(host) || (!strings.Contains(host, ".") && host == c) {
			return nil, fmt.Errorf("world name [%d] %q: need a fully qualified DNS name like api.example.com, or a zone like *.test.example", i, name)
		}
		if host == clusterDomain || strings.HasSuffix(host, "."+clusterDomain) || strings.HasSuffix(clusterDomain, "."+host) {
			return nil, fmt.Errorf("world name [%d] %q: names under %s belong to the cluster", i, name, clusterDomain)
		}
		if !seen[c] {
			seen[c] = true
			clean = append(clean, c)
		}
	}
	sort.Strings(clean)
	return clean, nil
}

// worldGateway is the world namespace's own address, next hop for the node.
func (n *Node) worldGateway() netip.Addr { return nthAddr(n.st.WorldCIDR, 1) }

func (n *Node) buildWorldLocked(hosts []WorldHost) error {
	name := WorldNetns(n.opts.Instance)
	if err := netns.Create(name); err != nil {
		return err
	}
	addrs := []netip.Addr{n.worldGateway()}
	for _, h := range hosts {
		addrs = append(addrs, h.IP)
	}
	// The world answers only the pods: its sole route leads to PodCIDR.
	l, err := n.plumb(plumbOptions{netnsPath: netns.Path(name), hostIf: WorldHostIfName, addrs: addrs, routes: []netip.Prefix{n.st.PodCIDR}})
	if err != nil {
		return fmt.Errorf("world: %w", err)
	}
	if err := n.linkUp(l); err != nil {
		return fmt.Errorf("world: %w", err)
	}
	if err := n.nodeRoute(l, n.st.WorldCIDR, n.worldGateway()); err != nil {
		return fmt.Errorf("world: %w", err)
	}
	pid, start, err := startWorkload(startOptions{
		exe: n.opts.Executable, netnsPath: netns.Path(name), cgroup: n.st.CgroupPath,
		logFile: filepath.Join(StateDir(n.opts.StateRoot, n.opts.Instance), "logs", "world.log"),
		cfg:     workload.Config{Pod: "world", HTTPPorts: WorldPorts},
	})
	if err != nil {
		return fmt.Errorf("world: %w", err)
	}
	n.st.WorldNetns = name
	n.st.WorldPID, n.st.WorldPIDTime = pid, start
	return nil
}

func (n *Node) removeWorldLocked() error {
	if err := killProcess(n.st.WorldPID, n.st.WorldPIDTime); err != nil {
		return fmt.Errorf("world: %w", err)
	}
	n.st.WorldPID, n.st.WorldPIDTime = 0, 0
	if h, err := nsHandle(n.NodeNetnsPath()); err == nil {
		if l, err := h.LinkByName(WorldHostIfName); err == nil {
			h.LinkDel(l) // takes the world route and neighbour with it
		}
		h.Close()
	}
	if err := netns.Delete(WorldNetns(n.opts.Instance)); err != nil {
		return fmt.Errorf("world: %w", err)
	}
	n.st.WorldNetns = ""
	return nil
}
