package httpproxy

import (
	"strings"
	"testing"
)

func TestNormalizeTarget(t *testing.T) {
	tests := []struct{ in, path, query string }{
		{"/", "/", ""},
		{"/api/v1/users?x=1&y=%2F", "/api/v1/users", "x=1&y=%2F"},
		{"/api/./v1/../v1/users", "/api/v1/users", ""},
		{"/api/v1/..", "/api/", ""},
		{"/../../admin", "/admin", ""},
		{"//admin//secret", "/admin/secret", ""},
		{"/%61dmin/secret", "/admin/secret", ""},
		{"/api%2F..%2Fadmin", "/admin", ""},
		{"/api%2f..%2fadmin", "/admin", ""},
		{"/api/%2e%2e/admin", "/admin", ""},
		{"/a%3fb", "/a%3Fb", ""},
		{"/caf%c3%a9", "/caf%C3%A9", ""},
		{"http://evil.example/admin/../health", "/health", ""},
		{"http://h", "/", ""},
	}
	for _, tt := range tests {
		p, q, err := normalizeTarget(tt.in)
		if err != nil || p != tt.path || q != tt.query {
			t.Errorf("%q: got %q %q %v, want %q %q", tt.in, p, q, err, tt.path, tt.query)
		}
	}
	for _, bad := range []string{"", "*", "admin", "/a\\b", "/a%5Cb", "/a%5cb", "/a%00b", "/a%zz", "/a%2", "/a b", "/a#frag", "/\xc3\xa9", "/a?b c", "mailto:x"} {
		if p, q, err := normalizeTarget(bad); err == nil {
			t.Errorf("%q: accepted as %q %q", bad, p, q)
		}
	}
}

// FuzzNormalizeTarget: normalisation never panics, and what it returns is
// already normal (idempotent): no repeated slashes, no dot segments, no
// decodable escapes left for a backend to decode differently.
func FuzzNormalizeTarget(f *testing.F) {
	for _, s := range []string{"/", "/a/../b", "//x/./y/", "/%2e%2E/%2F", "/a%2fb?c=%2F", "http://h/p/../q", "/%C3%A9", "/a/b/.."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		p, q, err := normalizeTarget(in)
		if err != nil {
			return
		}
		if !strings.HasPrefix(p, "/") || strings.Contains(p, "//") {
			t.Fatalf("%q -> %q", in, p)
		}
		for _, seg := range strings.Split(p, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("%q -> %q keeps a dot segment", in, p)
			}
		}
		target := p
		if q != "" {
			target += "?" + q
		}
		p2, q2, err := normalizeTarget(target)
		if err != nil || p2 != p || q2 != q {
			t.Fatalf("%q -> %q %q, again -> %q %q %v", in, p, q, p2, q2, err)
		}
	})
}
