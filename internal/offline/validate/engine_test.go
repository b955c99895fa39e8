package validate

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/api"
)

// ccnp wraps a spec body into a CiliumClusterwideNetworkPolicy.
func ccnp(spec string) string {
	return "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: c\nspec:\n" + indent(spec, "  ")
}

// decodeOne decodes a document that must hold exactly one object.
func decodeOne(t *testing.T, doc string) *manifest.Object {
	t.Helper()
	objs, errs := manifest.Decode("bad.yaml", []byte(doc))
	if len(errs) > 0 || len(objs) != 1 {
		t.Fatalf("decode: %d objects, errors %v", len(objs), errs)
	}
	return objs[0]
}

// For every feature the engine refuses, validation reports an error at the
// same field, so a policy validation accepts always loads. The table must
// cover every feature of policy.UnsupportedFeatures().
func TestEngineUnsupportedFeaturesAreErrors(t *testing.T) {
	const sel = "endpointSelector:\n  matchLabels:\n    app: backend\n"
	const tcp443 = "  toPorts:\n  - ports:\n    - port: \"443\"\n      protocol: TCP\n"
	tests := []struct {
		name, feature, doc, field string
	}{
		{"nodeSelector", policy.FeatureHostPolicies, cnp("nodeSelector:\n  matchLabels:\n    role: worker\ningress:\n- fromEntities: [world]\n"), "spec.nodeSelector"},
		{"nodeSelector in specs", policy.FeatureHostPolicies, "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: c\nspecs:\n- " + strings.TrimPrefix(indent(sel, "  "), "  ") + "- nodeSelector: {}\n", "specs[1].nodeSelector"},
		{"fromRequires", policy.FeatureFromRequires, cnp(sel + "ingress:\n- fromRequires:\n  - matchLabels: {env: prod}\n"), "spec.ingress[0].fromRequires"},
		{"fromRequires deny", policy.FeatureFromRequires, cnp(sel + "ingressDeny:\n- fromRequires:\n  - matchLabels: {env: prod}\n"), "spec.ingressDeny[0].fromRequires"},
		{"toRequires", policy.FeatureToRequires, cnp(sel + "egress:\n- toRequires:\n  - matchLabels: {env: prod}\n"), "spec.egress[0].toRequires"},
		{"fromNodes", policy.FeatureFromNodes, cnp(sel + "ingress:\n- fromNodes:\n  - matchLabels: {role: worker}\n"), "spec.ingress[0].fromNodes"},
		{"toNodes", policy.FeatureToNodes, ccnp(sel + "egressDeny:\n- toNodes:\n  - matchLabels: {role: worker}\n"), "spec.egressDeny[0].toNodes"},
		{"fromGroups", policy.FeatureGroups, cnp(sel + "ingress:\n- fromGroups:\n  - aws:\n      securityGroupsIds: [sg-1]\n"), "spec.ingress[0].fromGroups"},
		{"toGroups", policy.FeatureGroups, cnp(sel + "egress:\n- toGroups:\n  - aws:\n      labels: {tier: db}\n"), "spec.egress[0].toGroups"},
		{"cidrGroupRef", policy.FeatureCIDRGroups, cnp(sel + "egress:\n- toCIDRSet:\n  - cidrGroupRef: corp\n"), "spec.egress[0].toCIDRSet[0]"},
		{"cidrGroupSelector", policy.FeatureCIDRGroups, cnp(sel + "ingress:\n- fromCIDRSet:\n  - cidr: 10.0.0.0/8\n  - cidrGroupSelector:\n      matchLabels: {team: a}\n"), "spec.ingress[0].fromCIDRSet[1]"},
		{"authentication ingress", policy.FeatureMutualAuth, cnp(sel + "ingress:\n- fromEndpoints:\n  - {}\n  authentication:\n    mode: required\n"), "spec.ingress[0].authentication"},
		{"authentication egress", policy.FeatureMutualAuth, cnp(sel + "egress:\n- toEndpoints:\n  - {}\n  authentication:\n    mode: required\n"), "spec.egress[0].authentication"},
		{"terminatingTLS", policy.FeatureTLS, cnp(sel + "egress:\n- toFQDNs:\n  - matchName: a.com\n" + tcp443 + "    terminatingTLS:\n      secret: {name: s}\n"), "spec.egress[0].toPorts[0]"},
		{"originatingTLS", policy.FeatureTLS, cnp(sel + "egress:\n- toFQDNs:\n  - matchName: a.com\n" + tcp443 + "    originatingTLS:\n      secret: {name: s}\n"), "spec.egress[0].toPorts[0]"},
		{"listener", policy.FeatureListener, cnp(sel + "ingress:\n- fromEndpoints:\n  - {}\n" + tcp443 + "    listener:\n      envoyConfig: {kind: CiliumEnvoyConfig, name: e}\n      name: l\n"), "spec.ingress[0].toPorts[0].listener"},
		{"serverNames", policy.FeatureServerNames, cnp(sel + "egress:\n- toEntities: [world]\n" + tcp443 + "    serverNames: [a.com]\n"), "spec.egress[0].toPorts[0].serverNames"},
		{"serverNames deny", policy.FeatureServerNames, cnp(sel + "egressDeny:\n- toEntities: [world]\n" + tcp443 + "    serverNames: [a.com]\n"), "spec.egressDeny[0].toPorts[0].serverNames"},
		{"kafka", policy.FeatureKafka, cnp(sel + "ingress:\n- toPorts:\n  - ports: [{port: \"9092\", protocol: TCP}]\n    rules:\n      kafka: [{topic: t}]\n"), "spec.ingress[0].toPorts[0].rules.kafka"},
		{"l7proto", policy.FeatureGenericL7, cnp(sel + "ingress:\n- toPorts:\n  - ports: [{port: \"9000\", protocol: TCP}]\n    rules:\n      l7proto: myproto\n      l7:\n      - {op: get}\n"), "spec.ingress[0].toPorts[0].rules.l7proto"},
		{"headerMatches secret", policy.FeatureHeaderSecrets, cnp(sel + "ingress:\n- toPorts:\n  - ports: [{port: \"80\", protocol: TCP}]\n    rules:\n      http:\n      - path: /\n      - headerMatches:\n        - name: X-Token\n          value: v\n        - name: X-Key\n          secret: {name: s}\n"), "spec.ingress[0].toPorts[0].rules.http[1].headerMatches[1].secret"},
	}
	covered := map[string]bool{}
	for _, tt := range tests {
		covered[tt.feature] = true
		t.Run(tt.name, func(t *testing.T) {
			o := decodeOne(t, tt.doc)
			err := policy.CompilePolicy(o.Obj)
			var fe *policy.FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("engine: got %v, want a FieldError", err)
			}
			if fe.Field != tt.field || fe.Feature != tt.feature {
				t.Fatalf("engine refuses %s (feature %q), want %s (feature %q)", fe.Field, fe.Feature, tt.field, tt.feature)
			}
			var got []string
			for _, f := range Run(manifest.NewSet(o), nil, Options{NoLint: true}) {
				if f.Severity == Error && f.Field == fe.Field && f.Rule == ruleUnsupported &&
					strings.Contains(f.Message, tt.feature) && strings.Contains(f.Message, "not supported by Bulwark") {
					return
				}
				got = append(got, f.String())
			}
			t.Errorf("no %s error at %s; got:\n%s", ruleUnsupported, fe.Field, strings.Join(got, "\n"))
		})
	}
	for _, f := range policy.UnsupportedFeatures() {
		if !covered[f] {
			t.Errorf("unsupported feature %q has no case in this table", f)
		}
	}
}

// Engine refusals that are not unsupported features and that Cilium's own
// validation accepts still surface as errors at the engine's field.
func TestEngineRefusalIsReported(t *testing.T) {
	doc := ccnp("endpointSelector: {}\negress:\n- toServices:\n  - k8sService:\n      serviceName: db\n")
	o := decodeOne(t, doc)
	var fe *policy.FieldError
	if err := policy.CompilePolicy(o.Obj); !errors.As(err, &fe) {
		t.Fatalf("engine: got %v, want a FieldError", err)
	}
	for _, f := range Run(manifest.NewSet(o), nil, Options{NoLint: true}) {
		if f.Severity == Error && f.Field == fe.Field && f.Rule == ruleEngineRefuses && strings.Contains(f.Message, fe.Reason) {
			return
		}
	}
	t.Errorf("no %s error at %s (%s)", ruleEngineRefuses, fe.Field, fe.Reason)
}

// toServices is implemented by the engine (validation once listed it as
// unsupported): both accept it.
func TestToServicesLoads(t *testing.T) {
	o := decodeOne(t, cnp("endpointSelector: {}\negress:\n- toServices:\n  - k8sService:\n      serviceName: db\n"))
	if err := policy.CompilePolicy(o.Obj); err != nil {
		t.Fatalf("engine: %v", err)
	}
	for _, f := range Run(manifest.NewSet(o), nil, Options{NoLint: true}) {
		if f.Severity == Error {
			t.Errorf("unexpected: %s", f)
		}
	}
}

// Over the seed manifests and every test document of this package: when
// the engine refuses a policy, validation reports at least one error for
// it. (The reverse need not hold: validation also applies Cilium's and the
// API server's checks.)
func TestEngineRefusalsImplyErrors(t *testing.T) {
	var docs []string
	seed, err := filepath.Glob("../../../testdata/seed/*.yaml")
	if err != nil || len(seed) == 0 {
		t.Fatalf("seed manifests: %v (%d files)", err, len(seed))
	}
	for _, p := range seed {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, string(b))
	}
	const sel = "endpointSelector:\n  matchLabels:\n    app: backend\n"
	docs = append(docs,
		cnp(sel+"ingressDeny:\n- fromEndpoints:\n  - {}\n  toPorts:\n  - ports:\n    - port: \"80\"\n      protocol: TCP\n    rules:\n      http:\n      - path: /\n"),
		cnp(sel+"ingress:\n- toPorts:\n  - rules:\n      http:\n      - path: /\n"),
		cnp(sel+"ingress:\n- toPorts:\n  - ports:\n    - port: \"53\"\n      protocol: UDP\n    rules:\n      dns:\n      - matchName: a.com\n"),
		cnp(sel+"egress:\n- toCIDRSet:\n  - cidr: 10.0.0.1\n"),
		cnp(sel+"egress:\n- toFQDNs:\n  - {}\n"),
		cnp(sel+"ingress:\n- icmps:\n  - fields: []\n"),
		cnp(sel+"egress:\n- toServices:\n  - {}\n"),
		strings.Replace(cnp(sel), "  namespace: demo\n", "", 1),
		netpol("podSelector: {}\ningress:\n- from:\n  - ipBlock:\n      cidr: 10.0.0.1\n"),
		netpol("podSelector: {}\negress:\n- ports:\n  - port: 70000\n"),
	)
	checked := 0
	for i, doc := range docs {
		objs, _ := manifest.Decode("doc.yaml", []byte(doc))
		for _, o := range objs {
			switch o.Obj.(type) {
			case *networkingv1.NetworkPolicy, api.Policy:
			default:
				continue
			}
			refusal := policy.CompilePolicy(o.Obj)
			if refusal == nil {
				continue
			}
			checked++
			if errs, _, _ := Count(Object(o)); errs == 0 {
				t.Errorf("doc %d: %s %s/%s: engine refuses (%v) but validation reports no error", i, o.Kind, o.Namespace, o.Name, refusal)
			}
		}
	}
	if checked < 8 {
		t.Errorf("only %d refused documents checked", checked)
	}
}
