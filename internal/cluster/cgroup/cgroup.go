// Package cgroup keeps a one-machine cluster's processes in one cgroup tree
// per cluster, on every mounted hierarchy (cgroup v2, v1, or the hybrid
// layout with v1 controllers and a v2 "unified" mount): the daemons
// (containerd, kubelet, kube-proxy, agents) in a leaf, and each kubelet's
// --cgroup-root beside it. Tear-down kills every process left in the tree
// (containers, shims, daemons) and removes it.
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Hierarchy is one mounted cgroup hierarchy.
type Hierarchy struct {
	Mount string // e.g. /sys/fs/cgroup/cpu or /sys/fs/cgroup
	V2    bool
	// Cpuset is a v1 cpuset hierarchy: a new group needs cpus and mems
	// copied from its parent before a process can join.
	Cpuset bool
}

// Hierarchies lists the mounted cgroup hierarchies from /proc/mounts.
func Hierarchies() ([]Hierarchy, error) {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	var hs []Hierarchy
	seen := map[string]bool{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		fl := strings.Fields(s.Text())
		if len(fl) < 4 || seen[fl[1]] {
			continue
		}
		switch fl[2] {
		case "cgroup2":
			hs = append(hs, Hierarchy{Mount: fl[1], V2: true})
		case "cgroup":
			opts := "," + fl[3] + ","
			hs = append(hs, Hierarchy{Mount: fl[1], Cpuset: strings.Contains(opts, ",cpuset,")})
		default:
			continue
		}
		seen[fl[1]] = true
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	if len(hs) == 0 {
		return nil, errors.New("no cgroup hierarchy mounted")
	}
	return hs, nil
}

// PureV2 reports whether the machine runs only the unified hierarchy.
func PureV2(hs []Hierarchy) bool { return len(hs) == 1 && hs[0].V2 }

// Create makes the group rel ("/a/b") on every hierarchy, with its parents.
// On cgroup v2 every parent delegates its controllers to its children, so
// a kubelet can use rel as its --cgroup-root.
func Create(hs []Hierarchy, rel string) error {
	parts := strings.Split(strings.Trim(rel, "/"), "/")
	for _, h := range hs {
		dir := h.Mount
		for _, p := range parts {
			parent := dir
			dir = filepath.Join(dir, p)
			if h.V2 {
				if err := delegate(parent); err != nil {
					return err
				}
			}
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return fmt.Errorf("create cgroup %s: %w", dir, err)
			}
			if h.Cpuset {
				for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
					if err := inherit(parent, dir, f); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

// delegate enables in dir's subtree_control every controller dir has.
func delegate(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("read controllers of %s: %w", dir, err)
	}
	var en []string
	for _, c := range strings.Fields(string(b)) {
		en = append(en, "+"+c)
	}
	if len(en) == 0 {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte(strings.Join(en, " ")), 0o644); err != nil {
		return fmt.Errorf("enable controllers in %s: %w", dir, err)
	}
	return nil
}

func inherit(parent, dir, file string) error {
	cur, err := os.ReadFile(filepath.Join(dir, file))
	if err == nil && strings.TrimSpace(string(cur)) != "" {
		return nil
	}
	v, err := os.ReadFile(filepath.Join(parent, file))
	if err != nil {
		return fmt.Errorf("read %s of %s: %w", file, parent, err)
	}
	if err := os.WriteFile(filepath.Join(dir, file), v, 0o644); err != nil {
		return fmt.Errorf("set %s of %s: %w", file, dir, err)
	}
	return nil
}

// ProcsFiles are the cgroup.procs files of rel on every hierarchy: writing
// a pid to each moves that process into the group everywhere.
func ProcsFiles(hs []Hierarchy, rel string) []string {
	var out []string
	for _, h := range hs {
		out = append(out, filepath.Join(h.Mount, rel, "cgroup.procs"))
	}
	return out
}

// V2Path is the directory of rel on the unified (v2) hierarchy, where
// cgroup BPF programs attach ("" when none is mounted).
func V2Path(hs []Hierarchy, rel string) string {
	for _, h := range hs {
		if h.V2 {
			return filepath.Join(h.Mount, rel)
		}
	}
	return ""
}

// Join moves pid into rel on every hierarchy.
func Join(hs []Hierarchy, rel string, pid int) error {
	for _, f := range ProcsFiles(hs, rel) {
		if err := os.WriteFile(f, []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("move %d into %s: %w", pid, f, err)
		}
	}
	return nil
}

// Pids lists every process in rel or below, on any hierarchy.
func Pids(hs []Hierarchy, rel string) []int {
	set := map[int]bool{}
	for _, h := range hs {
		root := filepath.Join(h.Mount, rel)
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			if err != nil {
				return nil
			}
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
					set[pid] = true
				}
			}
			return nil
		})
	}
	var out []int
	for p := range set {
		out = append(out, p)
	}
	sort.Ints(out)
	return out
}

// Destroy kills every process in rel and below with SIGKILL, round after
// round until none is left (a process forked meanwhile is caught by the
// next round), and removes the groups, deepest first, on every hierarchy.
// A missing group is not an error.
func Destroy(hs []Hierarchy, rel string, timeout time.Duration) error {
	if strings.Trim(rel, "/") == "" {
		return errors.New("cgroup: refusing to destroy the root group")
	}
	deadline := time.Now().Add(timeout)
	for {
		pids := Pids(hs, rel)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s: processes %v survive SIGKILL", rel, pids)
		}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var errs []error
	for _, h := range hs {
		root := filepath.Join(h.Mount, rel)
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			var err error
			for i := 0; i < 50; i++ { // a killed process leaves its group a moment later
				if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
					err = nil
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}
