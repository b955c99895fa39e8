package api

import (
	"encoding/json"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

func TestParsePort(t *testing.T) {
	tests := []struct {
		port    Port
		end     int32
		want    PortSpec
		wantErr bool
	}{
		{"80", 0, PortSpec{Number: 80}, false},
		{"0", 0, PortSpec{Number: 0}, false}, // every port, as in Cilium
		{"65535", 0, PortSpec{Number: 65535}, false},
		{"8000", 9000, PortSpec{Number: 8000, End: 9000}, false},
		{"8000", 8000, PortSpec{Number: 8000, End: 8000}, false},
		{"0x10", 0, PortSpec{Name: "0x10"}, false}, // a valid service name, so a name (as in Cilium)
		{"0o20", 0, PortSpec{Name: "0o20"}, false},
		{"HTTP", 0, PortSpec{Name: "http"}, false},
		{"http-alt", 0, PortSpec{Name: "http-alt"}, false},
		{"", 0, PortSpec{}, true},
		{"65536", 0, PortSpec{}, true},
		{"-1", 0, PortSpec{}, true},
		{"9000", 8000, PortSpec{}, true},
		{"0", 80, PortSpec{}, true},
		{"80", 70000, PortSpec{}, true},
		{"http", 90, PortSpec{}, true},
		{"-http", 0, PortSpec{}, true},
		{"ht--tp", 0, PortSpec{}, true},
		{"http-", 0, PortSpec{}, true},
		{"abcdefghijklmnop", 0, PortSpec{}, true}, // 16 chars
		{"ht_tp", 0, PortSpec{}, true},
	}
	for _, tt := range tests {
		got, err := ParsePort(tt.port, tt.end)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParsePort(%q, %d) err = %v, wantErr %v", tt.port, tt.end, err, tt.wantErr)
			continue
		}
		if err == nil && got != tt.want {
			t.Errorf("ParsePort(%q, %d) = %+v, want %+v", tt.port, tt.end, got, tt.want)
		}
	}
}

func TestParseProtocol(t *testing.T) {
	tests := map[L4Proto]resolved.Protocol{
		"": resolved.ProtoAny, "ANY": resolved.ProtoAny, "TCP": resolved.ProtoTCP,
		"UDP": resolved.ProtoUDP, "SCTP": resolved.ProtoSCTP, "ICMP": resolved.ProtoICMP,
	}
	for in, want := range tests {
		got, err := ParseProtocol(in)
		if err != nil || got != want {
			t.Errorf("ParseProtocol(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []L4Proto{"tcp", "GRE", "any"} {
		if _, err := ParseProtocol(bad); err == nil {
			t.Errorf("ParseProtocol(%q) accepted", bad)
		}
	}
}

func TestPortUnmarshal(t *testing.T) {
	var pp []PortProtocol
	if err := yaml.Unmarshal([]byte(`[{port: 80}, {port: "443"}, {port: http}]`), &pp); err != nil {
		t.Fatal(err)
	}
	if pp[0].Port != "80" || pp[1].Port != "443" || pp[2].Port != "http" {
		t.Errorf("got %+v", pp)
	}
	for _, bad := range []string{`{"port": 1.5}`, `{"port": true}`, `{"port": [1]}`} {
		var p PortProtocol
		if err := json.Unmarshal([]byte(bad), &p); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func sel(ml map[string]string, exprs ...metav1.LabelSelectorRequirement) EndpointSelector {
	return EndpointSelector{metav1.LabelSelector{MatchLabels: ml, MatchExpressions: exprs}}
}

func TestSelector(t *testing.T) {
	podLabels := labels.Set{"app": "web", LabelPodNamespace: "demo", ReservedLabelPrefix + "host": ""}
	tests := []struct {
		name string
		s    EndpointSelector
		want bool
	}{
		{"empty matches all", sel(nil), true},
		{"plain", sel(map[string]string{"app": "web"}), true},
		{"k8s prefix", sel(map[string]string{"k8s:app": "web", "k8s:io.kubernetes.pod.namespace": "demo"}), true},
		{"any prefix", sel(map[string]string{"any:app": "web"}), true},
		{"wrong ns", sel(map[string]string{"k8s:io.kubernetes.pod.namespace": "other"}), false},
		{"reserved", sel(map[string]string{"reserved:host": ""}), true},
		{"In", sel(nil, metav1.LabelSelectorRequirement{Key: "k8s:app", Operator: metav1.LabelSelectorOpIn, Values: []string{"db", "web"}}), true},
		{"NotIn matches missing key", sel(nil, metav1.LabelSelectorRequirement{Key: "tier", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"x"}}), true},
		{"DoesNotExist", sel(nil, metav1.LabelSelectorRequirement{Key: "app", Operator: metav1.LabelSelectorOpDoesNotExist}), false},
		{"conflicting sources", sel(map[string]string{"k8s:app": "web", "any:app": "db"}), false},
	}
	for _, tt := range tests {
		s, err := tt.s.Selector()
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if got := s.Matches(podLabels); got != tt.want {
			t.Errorf("%s: Matches = %v, want %v (selector %s)", tt.name, got, tt.want, s)
		}
	}
	if _, err := sel(map[string]string{"cidr:10.0.0.0/8": ""}).Selector(); err == nil {
		t.Error("cidr: source accepted")
	}
	if _, err := sel(nil, metav1.LabelSelectorRequirement{Key: "a", Operator: "Equals"}).Selector(); err == nil {
		t.Error("bad operator accepted")
	}
}

func TestNamespaceConfinement(t *testing.T) {
	in := func(s EndpointSelector, ls labels.Set) bool {
		x, err := s.Selector()
		if err != nil {
			t.Fatal(err)
		}
		return x.Matches(ls)
	}
	demo := labels.Set{"app": "web", LabelPodNamespace: "demo"}
	other := labels.Set{"app": "web", LabelPodNamespace: "other"}
	plain := sel(map[string]string{"app": "web"})
	named := sel(map[string]string{"k8s:io.kubernetes.pod.namespace": "other", "app": "web"})

	// Namespaced peers: confined unless the namespace is named.
	if p := EffectivePeerSelector("demo", plain); !in(p, demo) || in(p, other) {
		t.Error("peer selector not confined to the policy namespace")
	}
	if p := EffectivePeerSelector("demo", named); in(p, demo) || !in(p, other) {
		t.Error("peer selector naming a namespace was changed")
	}
	// Cluster-wide: not confined.
	if p := EffectivePeerSelector("", plain); !in(p, demo) || !in(p, other) {
		t.Error("clusterwide peer selector confined")
	}
	// Subjects of a namespaced policy are always in its namespace.
	if s := EffectiveSubjectSelector("demo", named); !in(s, demo) || in(s, other) {
		t.Error("subject selector escaped the policy namespace")
	}
	notDemo := sel(nil, metav1.LabelSelectorRequirement{Key: "k8s:io.kubernetes.pod.namespace", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"demo"}})
	if s := EffectiveSubjectSelector("demo", notDemo); in(s, demo) || in(s, other) {
		t.Error("subject matchExpressions on the namespace must be ANDed with the policy namespace")
	}
	if p := EffectivePeerSelector("demo", sel(map[string]string{"reserved:host": ""})); p.MentionsNamespace() {
		t.Error("reserved peer selector was namespaced")
	}
	if plain.MentionsNamespace() || !named.MentionsNamespace() {
		t.Error("MentionsNamespace wrong")
	}
	// The input is not modified.
	if len(plain.MatchLabels) != 1 || named.MatchLabels["k8s:io.kubernetes.pod.namespace"] != "other" {
		t.Error("input selector modified")
	}
}

func TestRulesAndDefaultDeny(t *testing.T) {
	var p CiliumNetworkPolicy
	doc := `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: demo}
spec:
  endpointSelector: {}
  ingress: [{}]
  egress: []
specs:
- endpointSelector: {}
  egress: [{toEntities: [world]}]
  enableDefaultDeny: {egress: false}
`
	if err := yaml.UnmarshalStrict([]byte(doc), &p); err != nil {
		t.Fatal(err)
	}
	rs := p.Rules()
	if len(rs) != 2 || p.RulePath(0) != "spec" || p.RulePath(1) != "specs[0]" {
		t.Fatalf("rules %d, paths %s %s", len(rs), p.RulePath(0), p.RulePath(1))
	}
	if !rs[0].DefaultDenyIngress() || rs[0].DefaultDenyEgress() {
		t.Error("ingress: [{}] must put ingress in default deny, egress: [] must not")
	}
	if rs[1].DefaultDenyEgress() {
		t.Error("enableDefaultDeny.egress=false ignored")
	}
}
