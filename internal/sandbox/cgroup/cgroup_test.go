package cgroup

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

func TestEnsureProcsRemove(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a cgroup")
	}
	mnt, err := Mount()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	dir := filepath.Join(mnt, "bulwark-cgtest-"+hex.EncodeToString(b))
	if err := Ensure(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Remove(dir) })
	if err := Ensure(dir); err != nil {
		t.Fatalf("Ensure is not idempotent: %v", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	pids, err := Procs(dir)
	if err != nil || len(pids) != 1 || pids[0] != cmd.Process.Pid {
		t.Fatalf("procs %v %v, want [%d]", pids, err, cmd.Process.Pid)
	}
	// Remove kills the members and deletes the directory.
	if err := Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil {
		t.Fatal("process in the removed cgroup exited cleanly")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("cgroup left: %v", err)
	}
	if err := Remove(dir); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
}
