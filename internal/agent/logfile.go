package agent

import (
	"fmt"
	"os"
	"sync"
	"syscall"
)

// Log rotation of a detached agent: agent.log is renamed agent.log.1
// (older ones shifted up to .N, the oldest dropped) when a write would take
// it past maxSize.
const (
	defaultLogMaxSize = 10 << 20
	defaultLogKeep    = 3
)

// rotatingLog is an append-only log file rotated by size. Safe for
// concurrent use. With redirectStdio, a process whose stderr is the log
// file has its stdout and stderr follow the current file (what a panic or
// the runtime prints lands next to the log lines).
type rotatingLog struct {
	path          string
	maxSize       int64
	keep          int
	redirectStdio bool

	mu   sync.Mutex
	f    *os.File
	size int64
}

func openRotatingLog(path string, maxSize int64, keep int, redirectStdio bool) (*rotatingLog, error) {
	l := &rotatingLog{path: path, maxSize: maxSize, keep: keep, redirectStdio: redirectStdio}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *rotatingLog) open() error {
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open log file: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("open log file: %w", err)
	}
	if l.f == nil && l.redirectStdio {
		// Only a process whose stderr already is this log (started by
		// 'bulwark up') has it follow the rotation.
		if se, err := os.Stderr.Stat(); err != nil || !os.SameFile(se, fi) {
			l.redirectStdio = false
		}
	} else if l.redirectStdio {
		for _, fd := range []int{1, 2} {
			_ = syscall.Dup3(int(f.Fd()), fd, 0)
		}
	}
	l.f, l.size = f, fi.Size()
	return nil
}

// Write appends p, rotating first when p would take the file past
// maxSize (a single larger write goes whole into a fresh file).
func (l *rotatingLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return 0, os.ErrClosed
	}
	if l.size > 0 && l.size+int64(len(p)) > l.maxSize {
		if err := l.rotate(); err != nil {
			// Keep logging into the full file rather than lose lines.
			fmt.Fprintf(l.f, "log rotation failed: %v\n", err)
		}
	}
	n, err := l.f.Write(p)
	l.size += int64(n)
	return n, err
}

func (l *rotatingLog) rotate() error {
	for i := l.keep - 1; i >= 1; i-- {
		_ = os.Rename(fmt.Sprintf("%s.%d", l.path, i), fmt.Sprintf("%s.%d", l.path, i+1))
	}
	if err := os.Rename(l.path, l.path+".1"); err != nil {
		return err
	}
	old := l.f
	if err := l.open(); err != nil {
		// Reopen failed: go on writing to the renamed file.
		return err
	}
	old.Close()
	return nil
}

// Close closes the file.
func (l *rotatingLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
