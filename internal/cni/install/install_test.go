package install

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bulwark-net/bulwark/internal/cni"
)

func TestPluginNameIsThePluginType(t *testing.T) {
	if PluginName != cni.PluginType {
		t.Fatalf("PluginName %q, the plugin's type is %q", PluginName, cni.PluginType)
	}
}

func writeExec(t *testing.T, path string, content []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, content, mode); err != nil {
		t.Fatal(err)
	}
}

func TestBinaryInstallsAndReplacesAtomically(t *testing.T) {
	src := filepath.Join(t.TempDir(), "bulwark-cni")
	dir := t.TempDir()
	writeExec(t, src, []byte("new plugin"), 0o700)
	writeExec(t, filepath.Join(dir, "bulwark-cni"), []byte("old plugin"), 0o755)
	if err := Binary(src, dir, "bulwark-cni"); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "bulwark-cni"))
	if err != nil || !bytes.Equal(got, []byte("new plugin")) {
		t.Fatalf("installed content = %q, %v; want the new binary", got, err)
	}
	fi, _ := os.Stat(filepath.Join(dir, "bulwark-cni"))
	if fi.Mode().Perm() != 0o755 {
		t.Fatalf("mode = %v, want 0755 (the runtime runs it)", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want only the plugin (no temporary file left)", len(entries))
	}
}

func TestBinaryRefusesBadInputLeavingTheTarget(t *testing.T) {
	dir := t.TempDir()
	writeExec(t, filepath.Join(dir, "bulwark-cni"), []byte("old plugin"), 0o755)
	notExec := filepath.Join(t.TempDir(), "plain")
	writeExec(t, notExec, []byte("x"), 0o644)
	exe := filepath.Join(t.TempDir(), "exe")
	writeExec(t, exe, []byte("x"), 0o755)
	for _, c := range []struct {
		src, dir, name, want string
	}{
		{filepath.Join(dir, "missing"), dir, "bulwark-cni", "open source binary"},
		{notExec, dir, "bulwark-cni", "not executable"},
		{t.TempDir(), dir, "bulwark-cni", "not a regular file"},
		{exe, filepath.Join(dir, "nodir"), "bulwark-cni", "CNI bin directory"},
		{exe, dir, "../escape", "not a plain file name"},
	} {
		err := Binary(c.src, c.dir, c.name)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Binary(%s, %s, %s) = %v, want an error containing %q", c.src, c.dir, c.name, err, c.want)
		}
	}
	got, _ := os.ReadFile(filepath.Join(dir, "bulwark-cni"))
	if string(got) != "old plugin" {
		t.Fatalf("target after refused installs = %q, want it untouched", got)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want no temporary file left", len(entries))
	}
}
