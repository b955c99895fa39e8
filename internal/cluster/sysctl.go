package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// kubeletTunables are the host-wide kernel settings every kubelet sets to
// the values it wants (kubelet's setupKernelTunables; it has no setting to
// leave them alone). Up records them, Down of the last cluster restores
// them.
var kubeletTunables = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// sysctlFile records the host's values from before the first cluster.
func sysctlFile() string { return filepath.Join(BaseDir, ".host-sysctls.json") }

// saveHostTunables records the kubelet-managed settings unless a record
// exists (an earlier cluster still up made it).
func saveHostTunables() error {
	if _, err := os.Stat(sysctlFile()); err == nil {
		return nil
	}
	vals := map[string]string{}
	for _, k := range kubeletTunables {
		b, err := os.ReadFile(filepath.Join("/proc/sys", k))
		if err != nil {
			continue
		}
		vals[k] = strings.TrimSpace(string(b))
	}
	b, err := json.Marshal(vals)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(BaseDir, 0o700); err != nil {
		return err
	}
	return os.WriteFile(sysctlFile(), b, 0o600)
}

// restoreHostTunables puts the recorded settings back once no cluster is
// left, and forgets them.
func restoreHostTunables() error {
	ents, _ := os.ReadDir(BaseDir)
	for _, e := range ents {
		if e.IsDir() {
			return nil // another cluster's kubelets still want their values
		}
	}
	b, err := os.ReadFile(sysctlFile())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var vals map[string]string
	if err := json.Unmarshal(b, &vals); err != nil {
		return fmt.Errorf("%s: %w", sysctlFile(), err)
	}
	var errs []error
	for k, v := range vals {
		if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore %s=%s: %w", k, v, err))
		}
	}
	if len(errs) == 0 {
		_ = os.Remove(sysctlFile())
	}
	return errors.Join(errs...)
}
