package observer

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/proxy"
)

func httpRecord(typ proxy.RecordType, v proxy.Verdict, method, url string, code int) proxy.Record {
	return proxy.Record{
		Time: time.Unix(1700000000, 0), Type: typ, Verdict: v, Direction: resolved.Ingress, EndpointID: backendEP,
		Flow: proxy.Flow{Src: netip.AddrPortFrom(frontendIP, 40000), Dst: netip.AddrPortFrom(backendIP, 8080), Protocol: resolved.ProtoTCP,
			SrcIdentity: frontendID, DstIdentity: backendID},
		Policies: []string{"demo/l7-http-policy"},
		Latency:  1500 * time.Microsecond,
		HTTP:     &proxy.HTTP{Method: method, URL: url, Protocol: "HTTP/1.1", Code: code, Headers: []proxy.Header{{Key: "X-Api-Version", Value: "v2"}}},
	}
}

// A proxy Record becomes a Hubble L7 flow with the fields the hubble CLI
// prints, the endpoints resolved and the policy named where L3/L4 flows
// name it; a response flows back from server to client.
func TestL7FlowConversion(t *testing.T) {
	o, err := New(Options{NodeName: "node-1", Resolver: demoResolver()})
	if err != nil {
		t.Fatal(err)
	}
	req := o.HandleL7(httpRecord(proxy.Request, proxy.Dropped, "DELETE", "http://backend:8080/api/v1/users", 0))
	if req.GetType() != flowpb.FlowType_L7 || req.GetVerdict() != flowpb.Verdict_DROPPED || req.GetEventType().GetType() != MonitorTypeAccessLog {
		t.Fatalf("request flow: %v", req)
	}
	h := req.GetL7().GetHttp()
	if req.GetL7().GetType() != flowpb.L7FlowType_REQUEST || h.GetMethod() != "DELETE" || h.GetUrl() != "http://backend:8080/api/v1/users" ||
		h.GetProtocol() != "HTTP/1.1" || len(h.GetHeaders()) != 1 || h.GetHeaders()[0].GetKey() != "X-Api-Version" {
		t.Errorf("request L7: %v", req.GetL7())
	}
	if req.GetSource().GetPodName() != "frontend-7d4b9c" || req.GetDestination().GetPodName() != "backend-5f6a8b" || req.GetDestination().GetID() != backendEP {
		t.Errorf("endpoints: %v -> %v", req.GetSource(), req.GetDestination())
	}
	if len(req.GetIngressDeniedBy()) != 1 || req.GetIngressDeniedBy()[0].GetName() != "l7-http-policy" ||
		req.GetIngressDeniedBy()[0].GetNamespace() != "demo" || req.GetIngressDeniedBy()[0].GetKind() != "CiliumNetworkPolicy" {
		t.Errorf("denied by: %v", req.GetIngressDeniedBy())
	}
	if req.GetL4().GetTCP().GetDestinationPort() != 8080 || req.GetIP().GetDestination() != backendIP.String() {
		t.Errorf("L3/L4: %v %v", req.GetIP(), req.GetL4())
	}

	resp := o.HandleL7(httpRecord(proxy.Response, proxy.Forwarded, "GET", "http://backend:8080/health", 200))
	if resp.GetL7().GetType() != flowpb.L7FlowType_RESPONSE || resp.GetL7().GetHttp().GetCode() != 200 || resp.GetL7().GetLatencyNs() != 1500000 ||
		resp.GetVerdict() != flowpb.Verdict_FORWARDED || !resp.GetIsReply().GetValue() {
		t.Errorf("response flow: %v", resp)
	}
	if resp.GetSource().GetPodName() != "backend-5f6a8b" || resp.GetIP().GetSource() != backendIP.String() || resp.GetL4().GetTCP().GetSourcePort() != 8080 {
		t.Errorf("a response flows from the server: %v %v %v", resp.GetSource(), resp.GetIP(), resp.GetL4())
	}
	if len(resp.GetIngressAllowedBy()) != 1 {
		t.Errorf("allowed by: %v", resp.GetIngressAllowedBy())
	}

	dns := o.HandleL7(proxy.Record{Type: proxy.Response, Verdict: proxy.Forwarded, Direction: resolved.Egress, EndpointID: backendEP,
		Flow:     proxy.Flow{Src: netip.AddrPortFrom(backendIP, 5353), Dst: netip.AddrPortFrom(netip.MustParseAddr("10.96.0.10"), 53), Protocol: resolved.ProtoUDP},
		Policies: []string{"demo/dns-egress-policy"},
		DNS:      &proxy.DNS{Query: "api.github.com.", QTypes: []string{"A"}, IPs: []netip.Addr{netip.MustParseAddr("140.82.112.5")}, TTL: 60}})
	d := dns.GetL7().GetDns()
	if d.GetQuery() != "api.github.com." || len(d.GetIps()) != 1 || d.GetTtl() != 60 || d.GetQtypes()[0] != "A" || len(dns.GetEgressAllowedBy()) != 1 {
		t.Errorf("DNS flow: %v", dns)
	}
	if dns.GetL4().GetUDP().GetSourcePort() != 53 {
		t.Errorf("DNS response L4: %v", dns.GetL4())
	}
}

// hubble's --protocol http|dns and --http-* filters on L7 flows.
func TestL7Filters(t *testing.T) {
	o, err := New(Options{NodeName: "node-1", Resolver: demoResolver()})
	if err != nil {
		t.Fatal(err)
	}
	req := o.HandleL7(httpRecord(proxy.Request, proxy.Forwarded, "GET", "http://backend:8080/api/v1/users?x=1", 0))
	resp403 := o.HandleL7(httpRecord(proxy.Response, proxy.Dropped, "DELETE", "http://backend:8080/api/v1/users", 403))
	dns := o.HandleL7(proxy.Record{Type: proxy.Request, Verdict: proxy.Forwarded, Direction: resolved.Egress, DNS: &proxy.DNS{Query: "api.github.com."}})
	ev := allowedSYN(0)
	l4 := o.Handle(&ev)
	tests := []struct {
		name string
		ff   *flowpb.FlowFilter
		want []*flowpb.Flow
	}{
		{"protocol http", &flowpb.FlowFilter{Protocol: []string{"http"}}, []*flowpb.Flow{req, resp403}},
		{"protocol dns", &flowpb.FlowFilter{Protocol: []string{"dns"}}, []*flowpb.Flow{dns}},
		{"method", &flowpb.FlowFilter{HttpMethod: []string{"get"}}, []*flowpb.Flow{req}},
		{"path", &flowpb.FlowFilter{HttpPath: []string{"^/api/v1/users$"}}, []*flowpb.Flow{req, resp403}},
		{"status exact", &flowpb.FlowFilter{HttpStatusCode: []string{"403"}}, []*flowpb.Flow{resp403}},
		{"status prefix", &flowpb.FlowFilter{HttpStatusCode: []string{"4+"}}, []*flowpb.Flow{resp403}},
		{"status other", &flowpb.FlowFilter{HttpStatusCode: []string{"5+"}}, nil},
		{"url", &flowpb.FlowFilter{HttpUrl: []string{`\?x=1$`}}, []*flowpb.Flow{req}},
		{"dns query", &flowpb.FlowFilter{DnsQuery: []string{`github\.com\.$`}}, []*flowpb.Flow{dns}},
		{"header", &flowpb.FlowFilter{HttpHeader: []*flowpb.HTTPHeader{{Key: "x-api-version", Value: "v2"}}}, []*flowpb.Flow{req, resp403}},
	}
	for _, tt := range tests {
		f, err := NewFilter([]*flowpb.FlowFilter{tt.ff}, nil)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		var got []*flowpb.Flow
		for _, fl := range []*flowpb.Flow{req, resp403, dns, l4} {
			if f.Match(fl) {
				got = append(got, fl)
			}
		}
		if len(got) != len(tt.want) {
			t.Errorf("%s: matched %d flows, want %d", tt.name, len(got), len(tt.want))
			continue
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("%s: matched %v", tt.name, got[i].GetSummary())
			}
		}
	}
}

// The stock hubble CLI reads L7 flows and filters them with its own L7
// flags.
func TestStockHubbleCLIL7(t *testing.T) {
	bin := stockHubble(t)
	o := newTestObserver(t, 0)
	o.HandleL7(httpRecord(proxy.Request, proxy.Forwarded, "GET", "http://backend:8080/health", 0))
	o.HandleL7(httpRecord(proxy.Response, proxy.Forwarded, "GET", "http://backend:8080/health", 200))
	o.HandleL7(httpRecord(proxy.Request, proxy.Dropped, "DELETE", "http://backend:8080/api/v1/users", 0))
	o.HandleL7(httpRecord(proxy.Response, proxy.Dropped, "DELETE", "http://backend:8080/api/v1/users", 403))
	_, _, sock := startServer(t, o)
	server := "unix://" + sock

	denied := runHubble(t, bin, "observe", "--server", server, "--protocol", "http", "--http-status", "403", "--print-policy-names")
	if lines := strings.Split(strings.TrimSpace(denied), "\n"); len(lines) != 1 ||
		!strings.Contains(lines[0], "demo/frontend-7d4b9c:40000 (ID:1001) <- demo/backend-5f6a8b:8080 (ID:1002) http-response DROPPED (HTTP/1.1 403 1ms (DELETE http://backend:8080/api/v1/users))") {
		t.Errorf("hubble observe --http-status 403:\n%s", denied)
	}
	reqs := parseJSONFlows(t, runHubble(t, bin, "observe", "--server", server, "-o", "json", "--http-method", "GET", "--type", "l7"))
	if len(reqs) != 2 || reqs[0].GetL7().GetHttp().GetUrl() != "http://backend:8080/health" || reqs[1].GetL7().GetHttp().GetCode() != 200 {
		t.Errorf("hubble observe --http-method GET: %v", reqs)
	}
	paths := runHubble(t, bin, "observe", "--server", server, "--http-path", "^/api/", "--print-policy-names")
	if !strings.Contains(paths, "http-request DROPPED (HTTP/1.1 DELETE http://backend:8080/api/v1/users)") || strings.Contains(paths, "/health") {
		t.Errorf("hubble observe --http-path ^/api/:\n%s", paths)
	}
}
