// Package httpproxy is Bulwark's L7 proxy for HTTP/1.1, HTTP/2 (h2c by
// prior knowledge and by Upgrade) and gRPC: it serves the client
// connections the transparent redirect hands it (ServeConn), decides every
// request with the flow's Cilium HTTP rules, and forwards allowed requests
// to the flow's original destination, never to anything the request
// names.
//
// Rule semantics are Cilium's (pkg/policy/api/http.go as its Envoy
// translation enforces them):
//   - method, path and host are RE2 expressions matched against the whole
//     value; path is matched against the normalised request target with
//     its query ("/health" does not allow "/health?x=1", as Envoy's :path);
//     host against the authority (Host, or :authority in HTTP/2).
//   - headers: "Name" requires the header; "Name value" and "Name: value"
//     (split at the first space, colons trimmed from the name) require
//     that exact, literal value — not a regex. A repeated header is matched
//     against its values joined by ",". Names are case-insensitive.
//   - headerMatches with no mismatch action (FAIL) are further conditions:
//     exact value, or presence when the value is empty. LOG, ADD, DELETE
//     and REPLACE never deny: on an allowed request whose header differs,
//     LOG records the mismatch (Record.Reason), ADD appends Name: value,
//     DELETE removes the header, REPLACE sets it to value. Secret
//     references are refused by the policy engine.
//   - The rules of one Stage are OR-ed; every Stage of the flow's Policy
//     (source egress, destination ingress) must allow.
//
// Answers: a denied request gets 403 "Access denied" and the connection
// stays usable (HTTP/1.1 and HTTP/2); a denied gRPC call (content-type
// application/grpc) gets a trailers-only response, HTTP 200 with
// grpc-status 7 PERMISSION_DENIED. Over a CiliumEnvoyConfig token bucket a
// request gets 429 "local_rate_limited" with x-envoy-ratelimited: true
// (gRPC: grpc-status 14 UNAVAILABLE). An unreachable upstream gives 503.
// A flow without L7 rules is closed unanswered; when its rules disappear,
// the next request is denied and the connection closed.
//
// Paths are normalised and the normalised path is what the backend
// receives (Cilium's default since CVE-2021-29492, Envoy's normalize_path
// and merge_slashes; where Cilium answers an encoded slash with a redirect
// to the unescaped path, UNESCAPE_AND_REDIRECT, Bulwark decodes it and
// forwards, deciding on the decoded path either way): percent-encoded
// unreserved characters and encoded slashes (%2F, %2f) are decoded, other
// escapes kept with upper-case hex, repeated slashes merged, dot segments
// removed. Targets the proxy cannot read the way every backend would
// (backslashes, control bytes, raw non-ASCII, fragments, bad escapes,
// asterisk-form) get 400. Absolute-form targets are reduced to path and
// authority; a Host header conflicting with :authority gets 400; request
// framing is Go's net/http on both paths (duplicate Content-Length, CL
// with TE, obs-fold and invalid pseudo-headers are refused or normalised
// by it) and the
// proxy always re-frames the request it forwards, so the backend reads
// exactly the requests the rules decided.
//
// Serving: ServeConn reads a plain HTTP/1.x connection itself (the lean
// path, serve1.go: net/http's own request parser, http.Server's request
// checks, a minimal response writer, no goroutine or context per request)
// and hands the connection to an http.Server at the first request it does
// not serve itself (HTTP/2 preface, Upgrade, Expect, CONNECT, absolute
// form, missing Host, anything that does not parse), replaying that
// request's bytes, so the server reads and answers it as if it had read
// the connection from the start.
//
// Upstream, always dialled through the Dialer as the original source to
// the original destination: an HTTP/1.1 client connection gets one
// upstream connection for its lifetime (dialled on its first allowed
// request; a request is written and answered on the serving goroutine);
// when the client connection ends with that upstream connection clean
// (every response read whole, nothing pending), it is kept idle (30 s at
// most) for the next client connection of the same original source
// address, source identity and original destination, never for another
// (as Envoy pools per upstream and source). HTTP/2 clients by prior
// knowledge and gRPC share one h2c pool per (original source address,
// source identity, original destination); h2c-upgraded clients are
// forwarded over HTTP/1.1 except gRPC. WebSocket upgrades an HTTP rule
// allows are tunnelled (frames are not inspected, as in Cilium). Every
// request yields a Request Record
// and a Response Record (code, upstream latency); header values named in
// Options.RedactHeaders, or whose name contains token, secret, password or
// key, are recorded as HUBBLE_REDACTED.
package httpproxy
