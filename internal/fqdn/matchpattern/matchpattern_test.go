package matchpattern

import "testing"

func TestMatch(t *testing.T) {
	cases := []struct {
		names, patterns []string
		name            string
		want            bool
	}{
		// matchName: exact, case-insensitive, trailing dot optional
		{names: []string{"api.github.com"}, name: "api.github.com.", want: true},
		{names: []string{"API.GitHub.com."}, name: "api.github.com", want: true},
		{names: []string{"api.github.com"}, name: "x.api.github.com", want: false},
		{names: []string{"api.github.com"}, name: "api.github.co", want: false},
		// "*" stays within one label
		{patterns: []string{"*.github.com"}, name: "api.github.com", want: true},
		{patterns: []string{"*.github.com"}, name: "a.b.github.com", want: false},
		{patterns: []string{"*.github.com"}, name: "github.com", want: false},
		{patterns: []string{"*.github.com"}, name: ".github.com", want: true}, // empty label run, as Cilium's regexp
		{patterns: []string{"api*.example.com"}, name: "api-v2.example.com", want: true},
		{patterns: []string{"api*.example.com"}, name: "api.x.example.com", want: false},
		{patterns: []string{"s3.*.amazonaws.com"}, name: "s3.us-east-1.amazonaws.com", want: true},
		// a leading "**." spans any depth, but at least one label
		{patterns: []string{"**.example.com"}, name: "a.example.com", want: true},
		{patterns: []string{"**.example.com"}, name: "a.b.c.example.com", want: true},
		{patterns: []string{"**.example.com"}, name: "example.com", want: false},
		{patterns: []string{"**.example.com"}, name: "badexample.com", want: false},
		// "*" alone: every name
		{patterns: []string{"*"}, name: "anything.at.all", want: true},
		{patterns: []string{"*"}, name: "com", want: true},
		// anchored: no suffix or prefix match, dots are literal
		{patterns: []string{"github.com"}, name: "githubxcom", want: false},
		{patterns: []string{"github.com"}, name: "evilgithub.com", want: false},
		{patterns: []string{"*github.com"}, name: "evilgithub.com", want: true},
		// nothing
		{name: "a.com", want: false},
	}
	for _, c := range cases {
		m, err := Compile(c.names, c.patterns)
		if err != nil {
			t.Fatal(err)
		}
		if got := m.Match(c.name); got != c.want {
			t.Errorf("names %v patterns %v: Match(%q) = %v, want %v (re %v)", c.names, c.patterns, c.name, got, c.want, m.res)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, p := range []string{"a+b.com", "[a].com", "a.**.com", "", "a b.com"} {
		if _, err := Compile(nil, []string{p}); err == nil {
			t.Errorf("pattern %q accepted", p)
		}
	}
	for _, p := range []string{"*", "**.a.com", "*.a-b_c.com", "A.COM"} {
		if _, err := Compile(nil, []string{p}); err != nil {
			t.Errorf("pattern %q: %v", p, err)
		}
	}
}
