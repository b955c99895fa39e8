package httpproxy

import (
	"encoding/base64"
	"errors"
	"net/url"
	"strings"
)

// errBadTarget is a request target the proxy refuses (400) rather than
// guess how the backend would read it.
var errBadTarget = errors.New("malformed request target")

// normalizeTarget turns a request target (origin-form "/p?q", or
// absolute-form "http://h/p?q") into the path and query the rules see and
// the backend receives. The invariant: the policy decision and the backend
// read the same path.
//
//   - Percent-encoded unreserved characters (ALPHA DIGIT - . _ ~) and
//     encoded slashes (%2F, %2f) are decoded; other escapes stay encoded with
//     upper-case hex digits.
//   - Repeated slashes are merged.
//   - Dot segments ("." and "..", also when they were percent-encoded) are
//     removed as RFC 3986 section 5.2.4 says; ".." never climbs above "/".
//   - Backslashes (raw or %5C), NUL and other control bytes, raw bytes
//     outside ASCII, fragments and invalid escapes are refused: backends
//     disagree on what they mean.
//
// The query is kept as received (it is matched as part of the path, as
// Envoy's :path is) after checking it has no control bytes.
func normalizeTarget(target string) (path, query string, err error) {
	if target == "" {
		return "", "", errBadTarget
	}
	if target[0] != '/' {
		u, perr := url.Parse(target)
		if perr != nil || u.Scheme == "" || u.Opaque != "" {
			return "", "", errBadTarget
		}
		target = u.EscapedPath()
		if target == "" {
			target = "/"
		}
		if u.RawQuery != "" || u.ForceQuery {
			target += "?" + u.RawQuery
		}
	}
	rawPath, query, _ := strings.Cut(target, "?")
	for i := 0; i < len(query); i++ {
		if c := query[i]; c < 0x21 || c >= 0x7f || c == '#' {
			return "", "", errBadTarget
		}
	}
	decoded, err := decodePath(rawPath)
	if err != nil {
		return "", "", err
	}
	return removeDotSegments(decoded), query, nil
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// decodePath decodes what normalizeTarget decodes and merges slashes. The
// result keeps every other escape, so it is still a valid escaped path.
func decodePath(p string) (string, error) {
	if p == "" || p[0] != '/' {
		return "", errBadTarget
	}
	var b strings.Builder
	b.Grow(len(p))
	const hexUpper = "0123456789ABCDEF"
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c == '%' {
			if i+2 >= len(p) {
				return "", errBadTarget
			}
			hi, ok1 := unhex(p[i+1])
			lo, ok2 := unhex(p[i+2])
			if !ok1 || !ok2 {
				return "", errBadTarget
			}
			i += 2
			d := hi<<4 | lo
			switch {
			case d == '/' || isUnreserved(d):
				c = d
			case d == '\\' || d < 0x20 || d == 0x7f:
				return "", errBadTarget
			default:
				b.WriteByte('%')
				b.WriteByte(hexUpper[hi])
				b.WriteByte(hexUpper[lo])
				continue
			}
		} else if c <= 0x20 || c >= 0x7f || c == '\\' || c == '#' {
			return "", errBadTarget
		}
		if c == '/' && b.Len() > 0 && strings.HasSuffix(b.String(), "/") {
			continue // merge slashes
		}
		b.WriteByte(c)
	}
	return b.String(), nil
}

// removeDotSegments resolves "." and ".." segments of a path that starts
// with "/" and has no repeated slashes.
func removeDotSegments(p string) string {
	if !strings.Contains(p, ".") {
		return p
	}
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	trailing := false
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			trailing = last
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			trailing = last
		default:
			out = append(out, s)
			trailing = false
		}
	}
	r := "/" + strings.Join(out, "/")
	if trailing && !strings.HasSuffix(r, "/") {
		r += "/"
	}
	return r
}

func decodeBase64URL(s string) ([]byte, error) {
	// HTTP2-Settings is base64url without padding (RFC 7540 section 3.2.1).
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}
