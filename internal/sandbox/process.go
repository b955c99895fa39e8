package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
	"github.com/bulwark-net/bulwark/internal/sandbox/workload"
)

// procStartTime returns field 22 of /proc/<pid>/stat (start time in clock
// ticks since boot) and whether the process is a zombie.
func procStartTime(pid int) (start uint64, zombie bool, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false, errors.New("malformed stat")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); start time is field 22 → f[19].
	if len(f) < 20 {
		return 0, false, errors.New("malformed stat")
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	return start, f[0] == "Z" || f[0] == "X", err
}

// processAlive reports whether pid is the process started at start (so a
// recycled pid is never mistaken for our workload) and not a zombie.
func processAlive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	st, zombie, err := procStartTime(pid)
	return err == nil && !zombie && st == start
}

// killProcess SIGKILLs the process group of pid (workloads are session
// leaders) if pid is still the process started at start, and waits until
// it is gone.
func killProcess(pid int, start uint64) error {
	if !processAlive(pid, start) {
		return nil
	}
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill workload %d: %w", pid, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for processAlive(pid, start) {
		if time.Now().After(deadline) {
			return fmt.Errorf("workload %d did not exit", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// startOptions describe one detached sandbox process.
type startOptions struct {
	exe       string
	netnsPath string
	cgroup    string
	logFile   string
	cfg       workload.Config
}

// startWorkload starts `exe __workload ...` born inside the namespace and
// the sandbox cgroup, in its own session, and waits until it has bound all
// its sockets. It returns the pid and its start time.
func startWorkload(o startOptions) (int, uint64, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return 0, 0, fmt.Errorf("ready pipe: %w", err)
	}
	defer r.Close()
	cg, err := os.Open(o.cgroup)
	if err != nil {
		w.Close()
		return 0, 0, fmt.Errorf("open cgroup: %w", err)
	}
	defer cg.Close()
	if err := os.MkdirAll(filepath.Dir(o.logFile), 0o755); err != nil {
		w.Close()
		return 0, 0, fmt.Errorf("create log dir: %w", err)
	}
	logf, err := os.OpenFile(o.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		w.Close()
		return 0, 0, fmt.Errorf("open log: %w", err)
	}
	defer logf.Close()

	cfg := o.cfg
	cfg.Netns = o.netnsPath
	cfg.ReadyFD = 3
	cmd := exec.Command(o.exe, append([]string{workload.Command}, cfg.Args()...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{w}
	cmd.Dir = "/"
	// Setsid: survives the agent; CgroupFD: in the sandbox cgroup before
	// its first instruction, so every socket it opens is translated.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	err = netns.Do(o.netnsPath, cmd.Start)
	w.Close()
	if err != nil {
		return 0, 0, fmt.Errorf("start workload: %w", err)
	}
	pid := cmd.Process.Pid
	start, _, serr := procStartTime(pid)
	go cmd.Wait() // reap it if it exits while we run

	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(r).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("unexpected readiness line %q", line)
		}
		ready <- err
	}()
	select {
	case err = <-ready:
	case <-time.After(30 * time.Second):
		err = errors.New("not ready after 30s")
	}
	if err == nil && serr != nil {
		err = serr
	}
	if err != nil {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		tail, _ := os.ReadFile(o.logFile)
		if len(tail) > 600 {
			tail = tail[len(tail)-600:]
		}
		return 0, 0, fmt.Errorf("workload %s did not become ready: %v (log %s: %s)", o.cfg.Pod, err, o.logFile, strings.TrimSpace(string(tail)))
	}
	return pid, start, nil
}
