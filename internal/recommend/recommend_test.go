package recommend

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bulwark-net/bulwark/internal/offline/check"
)

var stateFiles = []string{
	filepath.Join("..", "..", "testdata", "seed", "sample-app.yaml"),
	filepath.Join("testdata", "kube-dns.yaml"),
}

// flowMaker builds flows as the observer does, with the endpoints' real
// labels and addresses from the checker's state of the same manifests.
type flowMaker struct {
	t  *testing.T
	st *check.State
}

func (m flowMaker) endpoint(ref string) (*flowpb.Endpoint, string) {
	p, err := m.st.Peer(ref)
	if err != nil {
		m.t.Fatal(err)
	}
	ep := &flowpb.Endpoint{Identity: uint32(p.Identity)}
	ls, _ := m.st.Snap.Labels(p.Identity)
	for _, l := range ls {
		ep.Labels = append(ep.Labels, l.String())
	}
	if p.Endpoint != nil {
		ep.Namespace, ep.PodName = p.Endpoint.Key.Namespace, p.Endpoint.Key.Name
	}
	ip := ref
	if p.Addr.IsValid() {
		ip = p.Addr.String()
	}
	return ep, ip
}

func (m flowMaker) flow(src, dst string, proto string, port uint32, verdict flowpb.Verdict) *flowpb.Flow {
	s, sip := m.endpoint(src)
	d, dip := m.endpoint(dst)
	f := &flowpb.Flow{Verdict: verdict, Type: flowpb.FlowType_L3_L4, Source: s, Destination: d,
		IP: &flowpb.IP{Source: sip, Destination: dip}, IsReply: wrapperspb.Bool(false)}
	switch proto {
	case "UDP":
		f.L4 = &flowpb.Layer4{Protocol: &flowpb.Layer4_UDP{UDP: &flowpb.UDP{SourcePort: 40000, DestinationPort: port}}}
	default:
		f.L4 = &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: 40000, DestinationPort: port}}}
	}
	if verdict == flowpb.Verdict_DROPPED {
		f.DropReasonDesc = flowpb.DropReason_POLICY_DENIED
	}
	return f
}

// observed is the traffic of the sample app: what the recommendation must
// allow, no more.
var observed = []check.Flow{
	{Src: "demo/frontend-0", Dst: "demo/backend-0", Port: 8080, Protocol: "TCP"},
	{Src: "demo/backend-0", Dst: "demo/database-0", Port: 5432, Protocol: "TCP"},
	{Src: "demo/frontend-0", Dst: "kube-system/coredns-0", Port: 53, Protocol: "UDP"},
	{Src: "demo/backend-0", Dst: "kube-system/coredns-0", Port: 53, Protocol: "UDP"},
	{Src: "demo/backend-0", Dst: "198.18.0.5", Port: 443, Protocol: "TCP"},
	{Src: "198.18.0.9", Dst: "demo/frontend-0", Port: 80, Protocol: "TCP"},
}

// unobserved were never seen: the recommendation must deny each.
var unobserved = []check.Flow{
	{Src: "demo/frontend-0", Dst: "demo/database-0", Port: 5432, Protocol: "TCP"},     // skips a tier
	{Src: "demo/frontend-0", Dst: "demo/backend-0", Port: 9090, Protocol: "TCP"},      // another port
	{Src: "demo/database-0", Dst: "demo/backend-0", Port: 8080, Protocol: "TCP"},      // reverse direction
	{Src: "demo/frontend-0", Dst: "kube-system/coredns-0", Port: 53, Protocol: "TCP"}, // another protocol
	{Src: "demo/database-0", Dst: "kube-system/coredns-0", Port: 53, Protocol: "UDP"}, // a workload that never asked
	{Src: "demo/backend-0", Dst: "198.18.0.6", Port: 443, Protocol: "TCP"},            // another outside address
	{Src: "198.18.0.9", Dst: "demo/backend-0", Port: 8080, Protocol: "TCP"},           // the outside reaching past frontend
}

func observedFlows(t *testing.T, st *check.State) []*flowpb.Flow {
	m := flowMaker{t, st}
	var flows []*flowpb.Flow
	for _, f := range observed {
		// Each connection is reported at both ends (egress and ingress).
		flows = append(flows, m.flow(f.Src, f.Dst, f.Protocol, uint32(f.Port), flowpb.Verdict_FORWARDED))
		flows = append(flows, m.flow(f.Src, f.Dst, f.Protocol, uint32(f.Port), flowpb.Verdict_FORWARDED))
	}
	// Noise that must add nothing: a reply, a drop, an audit outside the
	// namespace, a pod talking to itself.
	reply := m.flow("demo/database-0", "demo/backend-0", "TCP", 40000, flowpb.Verdict_FORWARDED)
	reply.IsReply = wrapperspb.Bool(true)
	flows = append(flows, reply,
		m.flow("demo/frontend-0", "demo/database-0", "TCP", 5432, flowpb.Verdict_DROPPED),
		m.flow("198.18.0.7", "kube-system/coredns-0", "UDP", 53, flowpb.Verdict_AUDIT),
		m.flow("demo/backend-0", "demo/backend-0", "TCP", 7000, flowpb.Verdict_FORWARDED),
	)
	return flows
}

// TestRecommendationAllowsExactlyTheObservedFlows proves the output with
// the offline checker (the engine of 'bulwark policy check'): loaded with
// the app, every observed flow is allowed and every other one denied.
func TestRecommendationAllowsExactlyTheObservedFlows(t *testing.T) {
	base, err := check.Load(stateFiles...)
	if err != nil {
		t.Fatal(err)
	}
	flows := observedFlows(t, base)
	for _, kind := range []Kind{NetworkPolicy, CiliumNetworkPolicy} {
		t.Run(string(kind), func(t *testing.T) {
			res, err := Recommend(flows, Options{Namespace: "demo", Kind: kind})
			if err != nil {
				t.Fatal(err)
			}
			y, err := res.YAML()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("recommended:\n%s", y)
			file := filepath.Join(t.TempDir(), "recommended.yaml")
			if err := os.WriteFile(file, y, 0o644); err != nil {
				t.Fatal(err)
			}
			st, err := check.Load(append(append([]string(nil), stateFiles...), file)...)
			if err != nil {
				t.Fatalf("the recommendation does not load: %v\n%s", err, y)
			}
			for _, f := range observed {
				r, err := st.Check(f)
				if err != nil {
					t.Fatal(err)
				}
				if r.Verdict != "allowed" {
					t.Errorf("observed %s -> %s %s/%d is %s (policies %v)\n%s", f.Src, f.Dst, f.Protocol, f.Port, r.Verdict, r.Policies, y)
				}
			}
			for _, f := range unobserved {
				r, err := st.Check(f)
				if err != nil {
					t.Fatal(err)
				}
				if r.Verdict != "denied" {
					t.Errorf("unobserved %s -> %s %s/%d is %s", f.Src, f.Dst, f.Protocol, f.Port, r.Verdict)
				}
			}
			if len(res.Workloads) != 3 {
				t.Errorf("policies for %d workloads, want 3 (frontend, backend, database)", len(res.Workloads))
			}
			for _, w := range res.Workloads {
				if len(w.Workload.Selector) != 1 || w.Workload.Selector["app"] != w.Workload.Name {
					t.Errorf("workload %s selected by %v, want its app label alone", w.Workload.Name, w.Workload.Selector)
				}
			}
			again, _ := Recommend(flows, Options{Namespace: "demo", Kind: kind})
			if y2, _ := again.YAML(); string(y2) != string(y) {
				t.Error("the same flows gave different YAML")
			}
		})
	}
}

func TestRecommendIncludeDropped(t *testing.T) {
	base, err := check.Load(stateFiles...)
	if err != nil {
		t.Fatal(err)
	}
	m := flowMaker{t, base}
	flows := []*flowpb.Flow{m.flow("demo/frontend-0", "demo/database-0", "TCP", 5432, flowpb.Verdict_DROPPED)}
	res, err := Recommend(flows, Options{Namespace: "demo"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Workloads) != 0 || res.Skipped["dropped (--include-dropped counts them)"] != 1 {
		t.Errorf("a dropped flow counted without IncludeDropped: %+v", res)
	}
	res, err = Recommend(flows, Options{Namespace: "demo", IncludeDropped: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Workloads) != 2 {
		t.Errorf("with IncludeDropped, %d workloads, want frontend and database", len(res.Workloads))
	}
}

// DNS names the observer learned make a CNP name the destination by name.
func TestRecommendFQDN(t *testing.T) {
	base, err := check.Load(stateFiles...)
	if err != nil {
		t.Fatal(err)
	}
	m := flowMaker{t, base}
	f := m.flow("demo/backend-0", "198.18.0.5", "TCP", 443, flowpb.Verdict_FORWARDED)
	f.DestinationNames = []string{"API.Example.com."}
	res, err := Recommend([]*flowpb.Flow{f}, Options{Namespace: "demo", Kind: CiliumNetworkPolicy})
	if err != nil {
		t.Fatal(err)
	}
	y, _ := res.YAML()
	if !strings.Contains(string(y), "matchName: api.example.com") || strings.Contains(string(y), "toCIDR") {
		t.Errorf("CNP does not name the destination by its DNS name:\n%s", y)
	}
	res, _ = Recommend([]*flowpb.Flow{f}, Options{Namespace: "demo", Kind: NetworkPolicy})
	y, _ = res.YAML()
	if !strings.Contains(string(y), "cidr: 198.18.0.5/32") {
		t.Errorf("NetworkPolicy does not name the destination by address:\n%s", y)
	}
}

func TestRecommendRefusesBadOptions(t *testing.T) {
	if _, err := Recommend(nil, Options{}); err == nil {
		t.Error("no namespace accepted")
	}
	if _, err := ParseKind("ccnp"); err == nil {
		t.Error("kind ccnp accepted")
	}
}
