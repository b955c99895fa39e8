package policy_test

import (
	"errors"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/api"
)

// Unsupported lists every use of an unsupported feature in document order;
// CompilePolicy and the Repository refuse the policy with the first, as a
// FieldError carrying field and feature, and load nothing.
func TestUnsupportedRefusals(t *testing.T) {
	sel := &api.EndpointSelector{LabelSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}}
	cnp := &api.CiliumNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "p"},
		Specs: []api.Rule{
			{EndpointSelector: sel, Ingress: []api.IngressRule{{IngressCommonRule: api.IngressCommonRule{FromEndpoints: []api.EndpointSelector{*sel}}}}},
			{EndpointSelector: sel, Egress: []api.EgressRule{{
				EgressCommonRule: api.EgressCommonRule{ToRequires: []api.EndpointSelector{*sel}},
				ToPorts: []api.PortRule{{
					Ports: []api.PortProtocol{{Port: "9092", Protocol: "TCP"}},
					Rules: &api.L7Rules{Kafka: []api.PortRuleKafka{{}}},
				}},
			}}},
		},
	}
	got := policy.Unsupported(cnp)
	want := []policy.FieldError{
		{Field: "specs[1].egress[0].toRequires", Feature: policy.FeatureToRequires, Reason: "toRequires is not supported"},
		{Field: "specs[1].egress[0].toPorts[0].rules.kafka", Feature: policy.FeatureKafka, Reason: "Kafka rules are not supported"},
	}
	if len(got) != len(want) {
		t.Fatalf("Unsupported: %v, want %v", got, want)
	}
	for i := range want {
		if *got[i] != want[i] {
			t.Errorf("Unsupported[%d] = %+v, want %+v", i, *got[i], want[i])
		}
	}

	var fe *policy.FieldError
	err := policy.CompilePolicy(cnp)
	if !errors.As(err, &fe) || *fe != want[0] {
		t.Fatalf("CompilePolicy: %v, want the FieldError %+v", err, want[0])
	}
	if err.Error() != "CiliumNetworkPolicy prod/p: specs[1].egress[0].toRequires: toRequires is not supported" {
		t.Errorf("error text %q", err)
	}

	repo := policy.NewRepository(policy.Options{})
	_, err = repo.Upsert(cnp)
	var oe *policy.ObjectError
	if !errors.As(err, &oe) || !errors.As(err, &fe) || *fe != want[0] {
		t.Fatalf("Upsert: %v, want an ObjectError wrapping %+v", err, want[0])
	}
	if n := len(repo.Snapshot().Endpoints); n != 0 {
		t.Errorf("a refused update changed the repository (%d endpoints)", n)
	}

	every := map[string]bool{}
	for _, f := range policy.UnsupportedFeatures() {
		if every[f] {
			t.Errorf("feature %q listed twice", f)
		}
		every[f] = true
	}
	for _, w := range want {
		if !every[w.Feature] {
			t.Errorf("feature %q missing from UnsupportedFeatures", w.Feature)
		}
	}
}

// Other refusals also carry the field; a supported policy compiles.
func TestCompilePolicyFieldErrors(t *testing.T) {
	sel := &api.EndpointSelector{}
	bad := &api.CiliumClusterwideNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "c"},
		Spec: &api.Rule{EndpointSelector: sel, Egress: []api.EgressRule{{
			EgressCommonRule: api.EgressCommonRule{ToServices: []api.Service{{K8sService: &api.K8sServiceNamespace{ServiceName: "db"}}}},
		}}},
	}
	var fe *policy.FieldError
	if err := policy.CompilePolicy(bad); !errors.As(err, &fe) || fe.Field != "spec.egress[0].toServices[0].k8sService.namespace" || fe.Feature != "" {
		t.Fatalf("CompilePolicy: %v (%+v)", err, fe)
	}
	good := &api.CiliumNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "p"},
		Spec: &api.Rule{EndpointSelector: sel, Egress: []api.EgressRule{{
			EgressCommonRule: api.EgressCommonRule{ToServices: []api.Service{{K8sService: &api.K8sServiceNamespace{ServiceName: "db"}}}},
		}}},
	}
	if err := policy.CompilePolicy(good); err != nil {
		t.Fatalf("CompilePolicy: %v", err)
	}
	if err := policy.CompilePolicy("not a policy"); err == nil {
		t.Fatal("CompilePolicy accepted a string")
	}
	if err := policy.CompilePolicy((*api.CiliumNetworkPolicy)(nil)); err == nil {
		t.Fatal("CompilePolicy accepted a nil policy")
	}
}
