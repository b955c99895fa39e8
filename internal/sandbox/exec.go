package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"syscall"

	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ExecOptions say what to run where.
type ExecOptions struct {
	Instance  string // default "default"
	StateRoot string // default /run/bulwark
	Namespace string // default "default"
	Target    string // POD, pod/NAME or deploy/NAME
	Command   []string
	Stdin     io.Reader
	Stdout    io.Writer
	Stderr    io.Writer
}

// Exec runs a host command inside a pod: in the pod's network namespace,
// with the pod's resolv.conf bound over /etc/resolv.conf in a private mount
// namespace, and in the sandbox cgroup (so service addresses translate). It
// needs only the instance's state file, not a running agent. It returns the
// command's exit status (128+signal if killed by a signal).
func Exec(ctx context.Context, o ExecOptions) (int, error) {
	if len(o.Command) == 0 {
		return 0, errors.New("exec: no command given")
	}
	if o.Instance == "" {
		o.Instance = DefaultInstance
	}
	st, err := ReadState(o.StateRoot, o.Instance)
	if err != nil {
		return 0, err
	}
	pod, err := st.FindPod(o.Namespace, o.Target)
	if err != nil {
		return 0, err
	}
	path, err := exec.LookPath(o.Command[0])
	if err != nil {
		return 0, fmt.Errorf("exec: %w", err)
	}
	cg, err := os.Open(st.CgroupPath)
	if err != nil {
		return 0, fmt.Errorf("exec: open sandbox cgroup: %w", err)
	}
	defer cg.Close()

	cmd := exec.CommandContext(ctx, path, o.Command[1:]...)
	cmd.Args[0] = o.Command[0]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = o.Stdin, o.Stdout, o.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}

	errc := make(chan error, 1)
	go func() {
		// This thread gets a private mount namespace and the pod's network
		// namespace; the child inherits both. It is never unlocked, so it
		// is discarded when this goroutine ends.
		runtime.LockOSThread()
		errc <- startInPod(cmd, pod)
	}()
	if err := <-errc; err != nil {
		return 0, fmt.Errorf("exec in pod %s: %w", pod.Key(), err)
	}
	// While the command runs, signals meant for it are forwarded; a
	// terminal's ^C reaches it directly (same process group), so this
	// process only has to stay alive to report the exit status.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	go func() {
		for s := range sigs {
			if s != syscall.SIGINT && s != syscall.SIGQUIT {
				cmd.Process.Signal(s)
			}
		}
	}()
	err = cmd.Wait()
	signal.Stop(sigs)
	close(sigs)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	default:
		return 0, fmt.Errorf("exec in pod %s: %w", pod.Key(), err)
	}
}

func startInPod(cmd *exec.Cmd, pod PodInfo) error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare mount namespace: %w", err)
	}
	// Nothing mounted here may propagate back to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if pod.ResolvConf != "" {
		if err := unix.Mount(pod.ResolvConf, "/etc/resolv.conf", "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind resolv.conf: %w", err)
		}
	}
	h, err := vnetns.GetFromPath(pod.NetnsPath)
	if err != nil {
		return fmt.Errorf("open netns: %w", err)
	}
	defer h.Close()
	if err := vnetns.Set(h); err != nil {
		return fmt.Errorf("enter netns: %w", err)
	}
	return cmd.Start()
}
