package check

import "testing"

// FuzzParseFlow: a flows line never panics the parser, and an accepted
// line names both ends.
func FuzzParseFlow(f *testing.F) {
	for _, s := range []string{
		`{"src": "demo/a", "dst": "10.0.0.1", "port": 80, "protocol": "TCP"}`,
		`{"src": "::1", "dst": "demo/b", "port": "53", "protocol": "udp"}`,
		`{"src": "a/b", "dst": "c/d", "port": 1e3}`,
		`{}`, `[]`, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		fl, err := parseFlow(line)
		if err != nil {
			return
		}
		_, _, _ = ParseProtocol(fl.Protocol)
		_ = fl.Src + fl.Dst
	})
}
