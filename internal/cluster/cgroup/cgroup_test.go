package cgroup

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// A process started into a group is found there, and Destroy kills it and
// removes the group from every hierarchy.
func TestCreateJoinDestroy(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	hs, err := Hierarchies()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	base := "/bulwark-cgtest-" + hex.EncodeToString(b)
	t.Cleanup(func() { _ = Destroy(hs, base, 5*time.Second) })
	if err := Create(hs, base+"/daemons"); err != nil {
		t.Fatal(err)
	}
	if err := Create(hs, base+"/node-1"); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go cmd.Wait()
	if err := Join(hs, base+"/daemons", cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if got := Pids(hs, base); len(got) != 1 || got[0] != cmd.Process.Pid {
		t.Fatalf("Pids = %v, want [%d]", got, cmd.Process.Pid)
	}
	if err := Destroy(hs, base, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if _, err := os.Stat(filepath.Join(h.Mount, base)); err == nil {
			t.Errorf("%s left in %s", base, h.Mount)
		}
	}
	if err := Destroy(hs, "/", time.Second); err == nil {
		t.Error("Destroy of the root group did not refuse")
	}
}
