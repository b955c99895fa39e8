package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/bulwark-net/bulwark/internal/datapath/socklb"
	"github.com/bulwark-net/bulwark/internal/sandbox/cgroup"
	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
)

// TeardownOptions locate an instance; zero values are the defaults.
type TeardownOptions struct {
	Instance  string
	StateRoot string
	BPFFSRoot string
}

// Teardown removes every process, namespace (and with them every veth,
// route and neighbour), cgroup, bpffs pin and state file of an instance
// with the default roots. It works without a running agent and is
// idempotent.
func Teardown(instance string) error {
	return TeardownWith(TeardownOptions{Instance: instance})
}

// Teardown removes the node's instance (see the package function).
func (n *Node) Teardown() error {
	n.Close()
	return TeardownWith(TeardownOptions{Instance: n.opts.Instance, StateRoot: n.opts.StateRoot, BPFFSRoot: n.opts.BPFFSRoot})
}

// TeardownWith is Teardown with explicit roots.
func TeardownWith(o TeardownOptions) error {
	if o.Instance == "" {
		o.Instance = DefaultInstance
	}
	if !instanceRE.MatchString(o.Instance) {
		return fmt.Errorf("instance %q: use 1-20 lower-case letters, digits or '-'", o.Instance)
	}
	if o.StateRoot == "" {
		o.StateRoot = DefaultStateRoot
	}
	if o.BPFFSRoot == "" {
		o.BPFFSRoot = DefaultBPFFSRoot
	}
	var errs []error
	st, _ := ReadState(o.StateRoot, o.Instance)

	// 1. Processes: recorded ones first (in case they escaped the cgroup),
	// then everything in the cgroup, which is then removed.
	if st != nil {
		for _, p := range st.Pods {
			if err := killProcess(p.PID, p.PIDStartTime); err != nil {
				errs = append(errs, err)
			}
		}
		if err := killProcess(st.WorldPID, st.WorldPIDTime); err != nil {
			errs = append(errs, err)
		}
	}
	cgPath := ""
	if st != nil && st.CgroupPath != "" {
		cgPath = st.CgroupPath
	} else if mnt, err := cgroup.Mount(); err == nil {
		cgPath = filepath.Join(mnt, cgroupName(o.Instance))
	}
	if cgPath != "" {
		if err := cgroup.Remove(cgPath); err != nil {
			errs = append(errs, err)
		}
	}

	// 2. Pins: unpinning the cgroup links detaches the socket programs.
	bpffsDir := filepath.Join(o.BPFFSRoot, o.Instance)
	if st != nil && st.BPFFSDir != "" {
		bpffsDir = st.BPFFSDir
	}
	if err := socklb.Remove(filepath.Join(bpffsDir, "socklb")); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(bpffsDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove pins %s: %w", bpffsDir, err))
	}

	// 3. Namespaces: exactly this instance's names (another instance's
	// names can share the bwk-<instance>- prefix, e.g. "a" and "a-b").
	own := regexp.MustCompile(`^` + regexp.QuoteMeta(netnsPrefix(o.Instance)) + `([0-9a-f]{10}|node|world)$`)
	names := map[string]bool{}
	if ents, err := os.ReadDir(netns.Dir); err == nil {
		for _, e := range ents {
			if own.MatchString(e.Name()) {
				names[e.Name()] = true
			}
		}
	}
	if st != nil {
		for _, p := range st.Pods {
			names[p.Netns] = true
		}
	}
	for name := range names {
		if err := netns.Delete(name); err != nil {
			errs = append(errs, err)
		}
	}

	// 4. State.
	dir := StateDir(o.StateRoot, o.Instance)
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("remove state %s: %w", dir, err))
	}
	// The shared roots go too once the last instance has left them
	// (os.Remove refuses a non-empty directory).
	_ = os.Remove(o.BPFFSRoot)
	removeRootIfUnused(o.StateRoot)
	return errors.Join(errs...)
}
