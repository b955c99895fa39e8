package httpproxy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/bulwark-net/bulwark/internal/manifest"
)

func seedCEC(t *testing.T) map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "..", "testdata", "seed", "rate-limiting-policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(data), "\n---\n") {
		if !strings.Contains(doc, "kind: CiliumEnvoyConfig") {
			continue
		}
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	t.Fatal("no CiliumEnvoyConfig in the seed")
	return nil
}

func TestParseSeedEnvoyConfig(t *testing.T) {
	c, err := ParseEnvoyConfig(seedCEC(t))
	if err != nil {
		t.Fatal(err)
	}
	want := TokenBucketConfig{MaxTokens: 100, TokensPerFill: 100, FillInterval: time.Second}
	if c.Bucket != want || len(c.Services) != 1 || c.Services[0] != (ServiceRef{Namespace: "backend", Name: "api-server"}) ||
		c.Name != "rate-limit-config" || c.Namespace != "backend" || c.Listener != "api-rate-limit-listener" || c.StatPrefix != "http_local_rate_limiter" {
		t.Errorf("got %+v", c)
	}
}

// Everything Bulwark would not honour is refused with its field.
func TestParseEnvoyConfigRefusals(t *testing.T) {
	res := func(m map[string]any) map[string]any {
		return m["spec"].(map[string]any)["resources"].([]any)[0].(map[string]any)
	}
	hcm := func(m map[string]any) map[string]any {
		return res(m)["filter_chains"].([]any)[0].(map[string]any)["filters"].([]any)[0].(map[string]any)["typed_config"].(map[string]any)
	}
	lrl := func(m map[string]any) map[string]any {
		return hcm(m)["http_filters"].([]any)[0].(map[string]any)["typed_config"].(map[string]any)
	}
	const f0 = "spec.resources[0].filter_chains[0].filters[0]"
	tests := []struct {
		name, field string
		edit        func(m map[string]any)
	}{
		{"cluster resource", "spec.resources[0].@type", func(m map[string]any) { res(m)["@type"] = "type.googleapis.com/envoy.config.cluster.v3.Cluster" }},
		{"two resources", "spec.resources", func(m map[string]any) {
			s := m["spec"].(map[string]any)
			s["resources"] = append(s["resources"].([]any), res(m))
		}},
		{"backendServices", "spec.backendServices", func(m map[string]any) { m["spec"].(map[string]any)["backendServices"] = []any{} }},
		{"no services", "spec.services", func(m map[string]any) { delete(m["spec"].(map[string]any), "services") }},
		{"listener address", "spec.resources[0].address", func(m map[string]any) { res(m)["address"] = map[string]any{} }},
		{"route config", f0 + ".typed_config.route_config", func(m map[string]any) { hcm(m)["route_config"] = map[string]any{} }},
		{"other http filter", f0 + ".typed_config.http_filters[1].name", func(m map[string]any) {
			h := hcm(m)
			h["http_filters"] = append(h["http_filters"].([]any), map[string]any{"name": "envoy.filters.http.lua"})
		}},
		{"descriptors", f0 + ".typed_config.http_filters[0].typed_config.descriptors", func(m map[string]any) { lrl(m)["descriptors"] = []any{} }},
		{"partial enforcement", f0 + ".typed_config.http_filters[0].typed_config.filter_enforced.default_value.numerator", func(m map[string]any) {
			lrl(m)["filter_enforced"] = map[string]any{"default_value": map[string]any{"numerator": 50, "denominator": "HUNDRED"}}
		}},
		{"zero tokens", f0 + ".typed_config.http_filters[0].typed_config.token_bucket", func(m map[string]any) {
			lrl(m)["token_bucket"].(map[string]any)["max_tokens"] = 0
		}},
		{"bad interval", f0 + ".typed_config.http_filters[0].typed_config.token_bucket.fill_interval", func(m map[string]any) {
			lrl(m)["token_bucket"].(map[string]any)["fill_interval"] = "soon"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := seedCEC(t)
			tt.edit(m)
			_, err := ParseEnvoyConfig(m)
			if err == nil || !strings.HasPrefix(err.Error(), tt.field+":") {
				t.Errorf("got %v, want an error at %s", err, tt.field)
			}
		})
	}
}

// The raw document the manifest decoder keeps for a CiliumEnvoyConfig is
// what ParseEnvoyConfig reads.
func TestParseEnvoyConfigFromManifest(t *testing.T) {
	path := filepath.Join("..", "..", "..", "testdata", "seed", "rate-limiting-policy.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	objs, _ := manifest.Decode(path, data)
	for _, o := range objs {
		u, ok := o.Obj.(*manifest.Unsupported)
		if !ok || u.Kind != "CiliumEnvoyConfig" {
			continue
		}
		c, err := ParseEnvoyConfig(u.Raw)
		if err != nil || c.Bucket.MaxTokens != 100 || c.Bucket.FillInterval != time.Second {
			t.Fatalf("%+v %v", c, err)
		}
		return
	}
	t.Fatal("the decoder kept no CiliumEnvoyConfig")
}
