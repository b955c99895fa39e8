package agent

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// The log rotates by size: the current file stays under the limit, a few
// older ones are kept, the oldest dropped, and no line is lost or split.
func TestRotatingLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.log")
	l, err := openRotatingLog(path, 1000, 3, true)
	if err != nil {
		t.Fatal(err)
	}
	line := func(i int) []byte { return []byte(fmt.Sprintf("line %04d %s\n", i, bytes.Repeat([]byte("x"), 80))) }
	for i := 0; i < 100; i++ {
		if _, err := l.Write(line(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	var all []byte
	for _, name := range []string{".3", ".2", ".1", ""} {
		b, err := os.ReadFile(path + name)
		if err != nil {
			t.Fatalf("%s%s: %v", path, name, err)
		}
		if len(b) > 1000 {
			t.Errorf("%s%s is %d bytes; limit 1000", path, name, len(b))
		}
		all = append(all, b...)
	}
	if _, err := os.Stat(path + ".4"); !os.IsNotExist(err) {
		t.Errorf("a fourth old log is kept: %v", err)
	}
	// The kept files hold the newest lines, in order, whole.
	n := len(all) / len(line(0))
	var want []byte
	for i := 100 - n; i < 100; i++ {
		want = append(want, line(i)...)
	}
	if !bytes.Equal(all, want) {
		t.Errorf("kept logs are not the last %d lines in order", n)
	}
}
