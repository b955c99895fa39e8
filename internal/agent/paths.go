package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/bulwark-net/bulwark/internal/agentapi"
)

// DefaultPinRoot is the bpffs directory under which each instance pins its
// datapath.
const DefaultPinRoot = "/sys/fs/bpf/bulwark"

// instanceName matches the sandbox's rule: names become parts of netns
// and interface names.
var instanceName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$`)

// ValidInstanceName checks that an instance name is a short DNS label: it
// becomes part of paths, interface and namespace names.
func ValidInstanceName(name string) error {
	if !instanceName.MatchString(name) {
		return fmt.Errorf("instance name %q: must be 1-20 lower-case letters, digits or '-', starting and ending with a letter or digit", name)
	}
	return nil
}

// PathsOptions chooses the roots of an instance's paths; empty fields take
// the defaults.
type PathsOptions struct {
	Instance  string
	RunRoot   string // default /run/bulwark
	StateRoot string // default /var/lib/bulwark
	PinRoot   string // default /sys/fs/bpf/bulwark
}

// Paths are the files and directories of one instance.
type Paths struct {
	Instance string
	RunRoot  string // parent of RunDir; the sandbox's state root too
	PinRoot  string // parent of PinDir; the sandbox's bpffs root too
	StateDir string // persistent: objects, sandbox state, log
	RunDir   string // volatile, 0700: socket, pid/lock file
	PinDir   string // the instance's bpffs directory (datapath pins in PinDir/datapath)
	Socket   string // the agent API
	LockFile string // holds the agent's pid; flock-ed while it runs
	Objects  string // the desired objects, persisted
	LogFile  string // the detached agent's log
	Hubble   string // the Hubble unix socket
}

// NewPaths derives every path of an instance.
func NewPaths(o PathsOptions) Paths {
	if o.RunRoot == "" {
		o.RunRoot = agentapi.DefaultRunDir
	}
	if o.StateRoot == "" {
		o.StateRoot = agentapi.DefaultStateRoot
	}
	if o.PinRoot == "" {
		o.PinRoot = DefaultPinRoot
	}
	run := filepath.Join(o.RunRoot, o.Instance)
	p := Paths{
		Instance: o.Instance,
		RunRoot:  o.RunRoot,
		PinRoot:  o.PinRoot,
		RunDir:   run,
		PinDir:   filepath.Join(o.PinRoot, o.Instance),
		Socket:   agentapi.SocketPath(o.RunRoot, o.Instance),
		LockFile: filepath.Join(run, "agent.pid"),
		Hubble:   filepath.Join(run, "hubble.sock"),
	}
	return p.WithStateDir(filepath.Join(o.StateRoot, o.Instance))
}

// WithStateDir returns p with its persistent files under dir.
func (p Paths) WithStateDir(dir string) Paths {
	p.StateDir = dir
	p.Objects = filepath.Join(dir, "objects.json")
	p.LogFile = filepath.Join(dir, "agent.log")
	return p
}

// SandboxDir is where the sandbox keeps its own state.
func (p Paths) SandboxDir() string { return filepath.Join(p.StateDir, "sandbox") }

// ErrRunning is returned (wrapped) when the instance's agent already runs.
var ErrRunning = errors.New("agent already running")

// Lock is the agent's exclusive hold on an instance: an flock on the pid
// file, released by the kernel when the process dies, so a crashed agent
// never blocks the next one.
type Lock struct{ f *os.File }

// AcquireLock takes the instance lock and writes our pid into it. If another
// live process holds it, the error wraps ErrRunning and names its pid.
func AcquireLock(p Paths) (*Lock, error) {
	if err := os.MkdirAll(p.RunDir, 0o700); err != nil {
		return nil, fmt.Errorf("create run directory: %w", err)
	}
	f, err := os.OpenFile(p.LockFile, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			pid, _ := RunningPID(p)
			return nil, fmt.Errorf("instance %q: %w (pid %d, socket %s)", p.Instance, ErrRunning, pid, p.Socket)
		}
		return nil, fmt.Errorf("lock %s: %w", p.LockFile, err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("write pid file: %w", err)
		}
	}
	return &Lock{f: f}, nil
}

// Release drops the lock and removes the pid file.
func (l *Lock) Release() {
	if l == nil || l.f == nil {
		return
	}
	_ = os.Remove(l.f.Name())
	l.f.Close()
	l.f = nil
}

// RunningPID returns the pid of the agent holding the instance lock, or 0
// when none does.
func RunningPID(p Paths) (int, error) {
	f, err := os.OpenFile(p.LockFile, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err == nil {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		return 0, nil // nobody holds it: stale file
	}
	b, err := os.ReadFile(p.LockFile)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("pid file %s: %w", p.LockFile, err)
	}
	return pid, nil
}
