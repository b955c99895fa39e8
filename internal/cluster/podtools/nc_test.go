package podtools

import (
	"bytes"
	"net"
	"strconv"
	"strings"
	"testing"
)

func TestNcScan(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	var out, errb bytes.Buffer
	if code := NcScan([]string{"-zv", "-w", "2", "127.0.0.1", port}, &out, &errb); code != 0 || !strings.Contains(errb.String(), "succeeded") {
		t.Errorf("open port: %d %q", code, errb.String())
	}
	l.Close()
	errb.Reset()
	if code := NcScan([]string{"-z", "-v", "-w2", "127.0.0.1", port}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "failed") {
		t.Errorf("closed port: %d %q", code, errb.String())
	}
	for _, bad := range [][]string{{"-z", "127.0.0.1"}, {"-z", "-w", "x", "h", "1"}, {"-zu", "h", "1"}, {"-z", "h", "99999"}} {
		if code := NcScan(bad, &out, &errb); code != 2 {
			t.Errorf("%v: %d, want 2", bad, code)
		}
	}
}
