package metrics

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// exprs returns every "expr" string in a Grafana dashboard document.
func exprs(v any) []string {
	var out []string
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			if s, ok := val.(string); ok && k == "expr" {
				out = append(out, s)
				continue
			}
			out = append(out, exprs(val)...)
		}
	case []any:
		for _, val := range x {
			out = append(out, exprs(val)...)
		}
	}
	return out
}

var promqlKeywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"bool": true, "offset": true, "and": true, "or": true, "unless": true, "inf": true, "nan": true,
}

var promqlIdent = regexp.MustCompile(`^[A-Za-z_:][A-Za-z0-9_:]*`)

// metricNames lexes a PromQL expression and returns the metric names it
// selects: identifiers that are not functions (followed by "("), keywords,
// label names (inside {} or the label list after by/without/on/ignoring),
// strings or durations.
func metricNames(expr string) []string {
	var names []string
	skipLabelList := false
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			j := i + 1
			for j < len(expr) && expr[j] != c {
				if expr[j] == '\\' {
					j++
				}
				j++
			}
			i = j + 1
		case c == '{' || c == '[':
			closer := byte('}')
			if c == '[' {
				closer = ']'
			}
			j := i + 1
			for j < len(expr) && expr[j] != closer {
				if expr[j] == '"' {
					j++
					for j < len(expr) && expr[j] != '"' {
						if expr[j] == '\\' {
							j++
						}
						j++
					}
				}
				j++
			}
			i = j + 1
		case c == '(' && skipLabelList:
			j := strings.IndexByte(expr[i:], ')')
			if j < 0 {
				return names
			}
			i += j + 1
			skipLabelList = false
		case c >= '0' && c <= '9' || c == '.':
			j := i
			// A number or a duration (5m, 1h30m): digits, dots, letters.
			for j < len(expr) && (expr[j] >= '0' && expr[j] <= '9' || expr[j] == '.' ||
				expr[j] >= 'a' && expr[j] <= 'z' || expr[j] >= 'A' && expr[j] <= 'Z') {
				j++
			}
			i = max(j, i+1)
		default:
			id := promqlIdent.FindString(expr[i:])
			if id == "" {
				i++
				continue
			}
			i += len(id)
			rest := strings.TrimLeft(expr[i:], " \t\n")
			lower := strings.ToLower(id)
			switch {
			case lower == "by" || lower == "without" || lower == "on" || lower == "ignoring" ||
				lower == "group_left" || lower == "group_right":
				skipLabelList = true
			case promqlKeywords[lower]:
			case strings.HasPrefix(rest, "("):
				// a function call
			default:
				names = append(names, id)
			}
		}
	}
	return names
}

func TestMetricNamesLexer(t *testing.T) {
	got := metricNames(`histogram_quantile(0.99, sum(rate(a_bucket{x="b(c)",y=~"Policy.*"}[5m])) by (le)) / on(job) group_left(z) b_total offset 5m + 1e3`)
	if !slices.Equal(got, []string{"a_bucket", "b_total"}) {
		t.Errorf("metric names %v, want [a_bucket b_total]", got)
	}
}

// exportedNames returns the series names of every descriptor in the registry,
// with the _bucket/_sum/_count series of histograms.
func exportedNames(t *testing.T, reg *prometheus.Registry) map[string]bool {
	t.Helper()
	ch := make(chan *prometheus.Desc, 256)
	go func() {
		reg.Describe(ch)
		close(ch)
	}()
	fq := regexp.MustCompile(`fqName: "([^"]+)"`)
	names := map[string]bool{}
	for d := range ch {
		m := fq.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("cannot read the name of %s", d)
		}
		names[m[1]] = true
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetType().String() == "HISTOGRAM" {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				names[f.GetName()+suffix] = true
			}
		}
	}
	return names
}

func TestDashboardsQueryExportedMetrics(t *testing.T) {
	// Every source configured and every histogram observed once, so every
	// series the agent can export is described.
	m, err := New(Options{CiliumCompat: true, Datapath: &fixedDatapath{}, State: &fixedState{}})
	if err != nil {
		t.Fatal(err)
	}
	m.PolicyImplementationDelay(0)
	m.ProxyUpstreamReply("http", 0)
	exported := exportedNames(t, m.Registry())

	for _, file := range []string{
		filepath.Join("..", "..", "dashboards", "bulwark.json"),
		filepath.Join("..", "..", "testdata", "seed", "grafana-dashboard.json"),
	} {
		t.Run(filepath.Base(file), func(t *testing.T) {
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var doc any
			if err := json.Unmarshal(raw, &doc); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			all := exprs(doc)
			if len(all) == 0 {
				t.Fatalf("%s: no PromQL expressions", file)
			}
			for _, e := range all {
				names := metricNames(e)
				if len(names) == 0 {
					t.Errorf("%s: expression %q selects no metric", file, e)
				}
				for _, n := range names {
					if !exported[n] {
						t.Errorf("%s: expression %q queries %s, which bulwark does not export", file, e, n)
					}
				}
			}
		})
	}
}

func TestBulwarkDashboardKeepsSeedPanels(t *testing.T) {
	read := func(path string) []string {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var doc any
		if err := json.Unmarshal(raw, &doc); err != nil {
			t.Fatal(err)
		}
		return exprs(doc)
	}
	ours := read(filepath.Join("..", "..", "dashboards", "bulwark.json"))
	for _, e := range read(filepath.Join("..", "..", "testdata", "seed", "grafana-dashboard.json")) {
		if !slices.Contains(ours, e) {
			t.Errorf("dashboards/bulwark.json lacks the seed query %q", e)
		}
	}
	for _, want := range []string{"bulwark_drops_by_namespace_total", "bulwark_drops_by_policy_total"} {
		if !slices.ContainsFunc(ours, func(e string) bool { return strings.Contains(e, want) }) {
			t.Errorf("dashboards/bulwark.json has no panel on %s", want)
		}
	}
}
