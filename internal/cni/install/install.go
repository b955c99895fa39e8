// Package install copies the bulwark-cni binary into a node's CNI bin
// directory (the DaemonSet's init container, 'bulwark install-cni'), so
// that a runtime calling the plugin at any moment finds either the old
// binary or the complete new one, never a partial file.
package install

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// PluginName is the plugin's binary name, cni.PluginType (not imported:
// the CLI that installs the plugin does not link the plugin's libraries).
const PluginName = "bulwark-cni"

// Binary copies the executable src to dir/name atomically: a temporary file
// in dir, written, synced and made executable (0755), then renamed over the
// target. On any error the target is untouched and the temporary file is
// removed.
func Binary(src, dir, name string) (err error) {
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return fmt.Errorf("install %s: target name %q is not a plain file name", src, name)
	}
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("install: open source binary: %w", err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("install: source %s is not a regular file", src)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("install: source %s is not executable", src)
	}
	di, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("install: CNI bin directory: %w", err)
	}
	if !di.IsDir() {
		return fmt.Errorf("install: CNI bin directory %s is not a directory", dir)
	}
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, in); err != nil {
		return fmt.Errorf("install: copy %s to %s: %w", src, dir, err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("install: sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	target := filepath.Join(dir, name)
	if ti, err := os.Lstat(target); err == nil && ti.IsDir() {
		return fmt.Errorf("install: target %s is a directory", target)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("install: %w", err)
	}
	if err := os.Rename(tmp.Name(), target); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	return nil
}
