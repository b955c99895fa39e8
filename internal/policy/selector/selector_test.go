package selector

import (
	"testing"

	"github.com/bulwark-net/bulwark/internal/identity"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func labels(ls ...identity.Label) identity.Labels { return identity.NewLabels(ls...) }

func TestMatches(t *testing.T) {
	web := labels(identity.Label{Source: "k8s", Key: "app", Value: "web"}, identity.Label{Source: "k8s", Key: "tier", Value: "front"})
	host := labels(identity.Label{Source: "reserved", Key: "host"})
	tests := []struct {
		sel   string
		ls    identity.Labels
		match bool
	}{
		// Empty selector: everything.
		{"", web, true},
		{"", host, true},
		// Source handling: no source and any: match every source.
		{"app=web", web, true},
		{"any:app=web", web, true},
		{"k8s:app=web", web, true},
		{"container:app=web", web, false},
		{"reserved:host", host, true},
		{"reserved:host", web, false},
		{"reserved:host=", host, true},
		// In / NotIn / Exists / DoesNotExist; NotIn holds without the key.
		{"app in (db,web)", web, true},
		{"app in (db)", web, false},
		{"app notin (db)", web, true},
		{"app notin (web)", web, false},
		{"env notin (prod)", web, true},
		{"app!=web", web, false},
		{"!env", web, true},
		{"!app", web, false},
		{"tier", web, true},
		{"app=web,tier=back", web, false},
	}
	for _, tc := range tests {
		s, err := Parse(tc.sel)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.sel, err)
		}
		if got := s.Matches(tc.ls); got != tc.match {
			t.Errorf("%q matches %s = %v, want %v", tc.sel, tc.ls, got, tc.match)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, bad := range []string{"a in (b", "a)", ",", "a=b c", "=v", "a in ((b))", "!a=b", "a b"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q): no error", bad)
		}
	}
}

func TestFromLabelSelector(t *testing.T) {
	s, err := FromLabelSelector(&metav1.LabelSelector{
		MatchLabels: map[string]string{"k8s:app": "web", "role": "x"},
		MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "env", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"prod", "dev"}},
			{Key: "k8s:io.kubernetes.pod.namespace", Operator: metav1.LabelSelectorOpExists},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "any:env notin (dev,prod),any:role=x,k8s:app=web,k8s:io.kubernetes.pod.namespace"
	if s.String() != want {
		t.Errorf("String() = %q, want %q", s.String(), want)
	}
	if !s.HasKey("io.kubernetes.pod.namespace") || s.HasSource("reserved") {
		t.Error("HasKey/HasSource")
	}
	for _, bad := range []*metav1.LabelSelector{
		{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: "Near"}}},
		{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: metav1.LabelSelectorOpIn}}},
		{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: metav1.LabelSelectorOpExists, Values: []string{"x"}}}},
	} {
		if _, err := FromLabelSelector(bad); err == nil {
			t.Errorf("FromLabelSelector(%+v): no error", bad)
		}
	}
}

// FuzzParse: Parse never panics, and whatever it accepts prints to a
// canonical form that parses back to the same selector.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "app=web", "k8s:app in (a,b),!reserved:host", "cidr:10.0.0.0/8,!cidr:10.1.0.0/16", "a notin (x),b!=c", "x==y", "k8s:a:b=c", "a in (,b)"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		s, err := Parse(text)
		if err != nil {
			return
		}
		again, err := Parse(s.String())
		if err != nil {
			t.Fatalf("Parse(%q) ok, but its String %q does not parse: %v", text, s.String(), err)
		}
		if again.String() != s.String() {
			t.Fatalf("round trip of %q: %q then %q", text, s.String(), again.String())
		}
		s.Matches(identity.NewLabels(identity.Label{Source: "k8s", Key: "a", Value: "b"}))
	})
}
