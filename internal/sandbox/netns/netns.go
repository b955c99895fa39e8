// Package netns creates, enters and deletes named network namespaces
// (bind-mounted under /run/netns like `ip netns add`, so `ip netns list`
// shows them).
//
// Invariant: code run by Do executes on an OS thread that is thrown away
// afterwards, so no goroutine ever continues in a namespace it did not ask
// for, and the host namespace is never modified by accident.
package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"

	vnetns "github.com/vishvananda/netns"
)

// Dir is where named namespaces are bind-mounted.
const Dir = "/run/netns"

// Path returns the bind-mount path of a named namespace.
func Path(name string) string { return filepath.Join(Dir, name) }

// Exists reports whether name is a mounted network namespace.
func Exists(name string) bool {
	h, err := vnetns.GetFromPath(Path(name))
	if err != nil {
		return false
	}
	h.Close()
	return true
}

// ensureDir makes Dir a shared mount point, as iproute2 does, before any
// namespace is mounted in it. Otherwise a later `ip netns add` would bind
// Dir over itself and hide (and pin) every mount made beneath it.
func ensureDir() error {
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", Dir, err)
	}
	err := unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point yet
		if err := unix.Mount(Dir, Dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s: %w", Dir, err)
		}
		err = unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s shared: %w", Dir, err)
	}
	return nil
}

// Create makes a new named network namespace. It fails if the name is
// taken.
func Create(name string) error {
	if Exists(name) {
		return fmt.Errorf("netns %s already exists", name)
	}
	if err := ensureDir(); err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it dies with this goroutine.
		runtime.LockOSThread()
		h, err := vnetns.NewNamed(name)
		if err != nil {
			errc <- fmt.Errorf("create netns %s: %w", name, err)
			return
		}
		h.Close()
		errc <- nil
	}()
	return <-errc
}

// Delete unmounts and removes a named namespace. Deleting a missing
// namespace is not an error.
func Delete(name string) error {
	p := Path(name)
	if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", name, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", name, err)
	}
	return nil
}

// Do runs fn on a dedicated OS thread that has entered the namespace at
// path. Sockets created by fn stay in that namespace; processes started by
// fn (os/exec) are born in it.
func Do(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is discarded
		h, err := vnetns.GetFromPath(path)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", path, err)
			return
		}
		defer h.Close()
		if err := vnetns.Set(h); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Handle opens the namespace at path; the caller closes it.
func Handle(path string) (vnetns.NsHandle, error) {
	h, err := vnetns.GetFromPath(path)
	if err != nil {
		return 0, fmt.Errorf("open netns %s: %w", path, err)
	}
	return h, nil
}

// WriteSysctl writes value to /proc/sys/<key> (key with slashes) inside the
// namespace at path.
func WriteSysctl(path, key, value string) error {
	return Do(path, func() error {
		// /proc/sys/net resolves against the opening thread's namespace.
		if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
		}
		return nil
	})
}
