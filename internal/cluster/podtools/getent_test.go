package podtools

import (
	"bytes"
	"strings"
	"testing"
)

func TestGetent(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Getent([]string{"hosts", "192.0.2.7"}, &out, &errb); code != 0 || strings.TrimSpace(out.String()) != "192.0.2.7       192.0.2.7" {
		t.Errorf("hosts literal: %d %q %q", code, out.String(), errb.String())
	}
	out.Reset()
	if code := Getent([]string{"ahostsv4", "192.0.2.7"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "STREAM 192.0.2.7") || !strings.Contains(out.String(), "DGRAM") {
		t.Errorf("ahostsv4 literal: %d %q", code, out.String())
	}
	errb.Reset()
	if code := Getent([]string{"services", "http"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "Unknown database") {
		t.Errorf("unknown database: %d %q", code, errb.String())
	}
	if code := Getent([]string{"hosts"}, &out, &errb); code != 1 {
		t.Errorf("no name: %d", code)
	}
}
