package metrics

import (
	"testing"
	"time"

	"github.com/bulwark-net/bulwark/internal/observer"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/proxy"
)

// Proxy Records reach the metrics through the observer: requests by
// outcome under Bulwark's and Cilium's names, and the upstream reply time
// the seed dashboard's L7 panel queries.
func TestL7RecordsThroughObserver(t *testing.T) {
	m, err := New(Options{CiliumCompat: true})
	if err != nil {
		t.Fatal(err)
	}
	o, err := observer.New(observer.Options{NodeName: "n", Sinks: []observer.FlowSink{m}})
	if err != nil {
		t.Fatal(err)
	}
	rec := func(typ proxy.RecordType, v proxy.Verdict, code int) proxy.Record {
		return proxy.Record{Type: typ, Verdict: v, Direction: resolved.Ingress, Latency: 2 * time.Millisecond,
			HTTP: &proxy.HTTP{Method: "GET", URL: "http://b/x", Protocol: "HTTP/1.1", Code: code}}
	}
	record := o.Recorder()
	record(rec(proxy.Request, proxy.Forwarded, 0))
	record(rec(proxy.Response, proxy.Forwarded, 200))
	record(rec(proxy.Request, proxy.Dropped, 0))
	record(rec(proxy.Response, proxy.Dropped, 403))
	record(rec(proxy.Request, proxy.RateLimited, 0))
	record(rec(proxy.Request, proxy.Error, 0))

	expect(t, m, "bulwark_policy_l7_total", map[string]string{"rule": "received", "proxy_type": "http"}, 4)
	expect(t, m, "bulwark_policy_l7_total", map[string]string{"rule": "forwarded", "proxy_type": "http"}, 1)
	expect(t, m, "bulwark_policy_l7_total", map[string]string{"rule": "denied", "proxy_type": "http"}, 1)
	expect(t, m, "bulwark_policy_l7_total", map[string]string{"rule": "rate_limited", "proxy_type": "http"}, 1)
	expect(t, m, "bulwark_policy_l7_total", map[string]string{"rule": "parse_errors", "proxy_type": "http"}, 1)
	expect(t, m, "cilium_policy_l7_total", map[string]string{"rule": "denied", "proxy_type": "envoy"}, 2)
	expect(t, m, "cilium_proxy_upstream_reply_seconds", map[string]string{"protocol_l7": "http"}, 1)
	expect(t, m, "hubble_http_requests_total", map[string]string{"method": "GET", "protocol": "HTTP/1.1", "reporter": "server"}, 4)
	expect(t, m, "hubble_http_responses_total", map[string]string{"method": "GET", "status": "403", "reporter": "server"}, 1)
	if held, _ := o.Ring().Stats(); held != 6 {
		t.Errorf("ring holds %d flows, want 6", held)
	}
}
