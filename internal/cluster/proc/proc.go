// Package proc starts and stops a one-machine cluster's long-running
// processes (containerd, kubelet, kube-proxy, agents): each one detached in
// its own session so it outlives the `bulwark cluster up` that started it,
// inside a network namespace and a cgroup chosen before its program runs,
// with its log and pid file in a state directory, so a later `bulwark
// cluster down` (another process) can stop it.
package proc

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Spec is one process.
type Spec struct {
	Name  string   // log (Name.log) and pid file (Name.pid) in Dir
	Dir   string   // state directory, also the working directory
	Bin   string   // program
	Args  []string // its arguments
	Netns string   // network namespace path to run in ("" = current)
	// CgroupProcs are cgroup.procs files the process joins before its
	// program starts (see internal/cluster/cgroup.ProcsFiles).
	CgroupProcs []string
	Env         []string // added to the environment
}

// Start starts the process and returns its pid. The process is already
// in its cgroups and network namespace when Bin begins.
func Start(s Spec) (int, error) {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return 0, err
	}
	logf, err := os.OpenFile(filepath.Join(s.Dir, s.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	// sh joins the cgroups and execs nsenter, which enters the namespace
	// and execs the program: one pid throughout, never outside the groups.
	script := `for f in $BULWARK_CGROUP_PROCS; do echo $$ > "$f" || exit 125; done; exec "$@"`
	argv := []string{"-c", script, "sh"}
	if s.Netns != "" {
		argv = append(argv, "nsenter", "--net="+s.Netns, "--")
	}
	argv = append(argv, s.Bin)
	argv = append(argv, s.Args...)
	cmd := exec.Command("/bin/sh", argv...)
	cmd.Env = append(os.Environ(), "BULWARK_CGROUP_PROCS="+strings.Join(s.CgroupProcs, " "))
	cmd.Env = append(cmd.Env, s.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = s.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", s.Name, err)
	}
	pid := cmd.Process.Pid
	go func() { _ = cmd.Wait() }() // reap if it exits while we run
	if err := os.WriteFile(filepath.Join(s.Dir, s.Name+".pid"), []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		return pid, err
	}
	// The spec, for Restart (a supervisor's or a test's).
	spec, err := json.Marshal(s)
	if err != nil {
		return pid, err
	}
	if err := os.WriteFile(filepath.Join(s.Dir, s.Name+".spec.json"), spec, 0o600); err != nil {
		return pid, err
	}
	return pid, nil
}

// Restart starts the process of name in dir again, as it was started
// last (its spec is kept beside its pid file). It refuses while that
// process still runs: stop or kill it first.
func Restart(dir, name string) (int, error) {
	if Alive(dir, name) {
		return 0, fmt.Errorf("restart %s: still running (pid %d)", name, Pid(dir, name))
	}
	b, err := os.ReadFile(filepath.Join(dir, name+".spec.json"))
	if err != nil {
		return 0, fmt.Errorf("restart %s: %w", name, err)
	}
	var s Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return 0, fmt.Errorf("restart %s: %s: %w", name, filepath.Join(dir, name+".spec.json"), err)
	}
	return Start(s)
}

// Pid reads the pid file of name in dir (0 when there is none).
func Pid(dir, name string) int {
	b, err := os.ReadFile(filepath.Join(dir, name+".pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0
	}
	return pid
}

// Alive reports whether the process of name in dir runs (not a zombie).
func Alive(dir, name string) bool {
	pid := Pid(dir, name)
	if pid == 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(st)
	if i := strings.LastIndexByte(s, ')'); i > 0 && i+2 < len(s) && s[i+2] == 'Z' {
		return false
	}
	return true
}

// Stop sends SIGTERM to the process of name in dir (its session: the
// process group it leads), then SIGKILL after grace, and removes the pid
// file. A process already gone is not an error.
func Stop(dir, name string, grace time.Duration) error {
	pid := Pid(dir, name)
	if pid == 0 {
		return nil
	}
	if err := syscall.Kill(-pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop %s (pid %d): %w", name, pid, err)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) && Alive(dir, name) {
		time.Sleep(50 * time.Millisecond)
	}
	if Alive(dir, name) {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		for i := 0; i < 100 && Alive(dir, name); i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
	_ = os.Remove(filepath.Join(dir, name+".pid"))
	return nil
}

// LogTail returns the last n lines of name's log in dir.
func LogTail(dir, name string, n int) string {
	b, err := os.ReadFile(filepath.Join(dir, name+".log"))
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
