package httpproxy

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// RateLimitConfig is what Bulwark enforces of a CiliumEnvoyConfig (or
// CiliumClusterwideEnvoyConfig): one listener whose HTTP connection
// manager runs Envoy's local_ratelimit token bucket on the requests to the
// backends of Services.
type RateLimitConfig struct {
	Kind, Name, Namespace string // the CEC itself ("" namespace for the clusterwide kind)
	Services              []ServiceRef
	Listener              string // the Envoy listener's name
	StatPrefix            string // local_ratelimit's stat_prefix
	Bucket                TokenBucketConfig
}

// ServiceRef names a Service whose backends the limit applies to.
type ServiceRef struct{ Namespace, Name string }

// Envoy type URLs Bulwark understands.
const (
	typeListener       = "type.googleapis.com/envoy.config.listener.v3.Listener"
	typeHCM            = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
	typeLocalRateLimit = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
	typeRouter         = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
)

// ParseEnvoyConfig reads a decoded CiliumEnvoyConfig object (apiVersion,
// kind, metadata, spec) into the rate limit it configures. Anything Bulwark
// would not honour is an error naming its field: other resource types,
// other filters, several listeners or filter chains, filter chain matches,
// route configurations, descriptors, partial filter_enabled /
// filter_enforced percentages, backendServices, nodeSelector.
//
// Envoy leaves a local_ratelimit without filter_enforced in shadow mode
// (counted, never answered 429). Bulwark enforces it: a limit written in a
// policy is enforced or refused, and the seed's rate-limiting-policy.yaml
// means to limit. An explicit 0% filter_enabled or filter_enforced is
// refused for the same reason.
func ParseEnvoyConfig(raw map[string]any) (RateLimitConfig, error) {
	var c RateLimitConfig
	p := &cecParser{}
	c.Kind = p.str(raw, "", "kind")
	switch c.Kind {
	case "CiliumEnvoyConfig", "CiliumClusterwideEnvoyConfig":
	default:
		return c, fmt.Errorf("kind: %q is not a CiliumEnvoyConfig", c.Kind)
	}
	if v := p.str(raw, "", "apiVersion"); v != "cilium.io/v2" && v != "cilium.io/v2alpha1" {
		p.fail("apiVersion", "unsupported %q", v)
	}
	meta := p.obj(raw, "", "metadata")
	c.Name = p.str(meta, "metadata", "name")
	c.Namespace = p.str(meta, "metadata", "namespace")
	if c.Name == "" && p.err == nil {
		p.fail("metadata.name", "required")
	}
	spec := p.obj(raw, "", "spec")
	p.only(spec, "spec", "services", "resources")
	svcs := p.list(spec, "spec", "services")
	if len(svcs) == 0 && p.err == nil {
		p.fail("spec.services", "required: the rate limit applies to the backends of these Services")
	}
	for i, s := range svcs {
		path := fmt.Sprintf("spec.services[%d]", i)
		so := p.asObj(s, path)
		p.only(so, path, "name", "namespace")
		ref := ServiceRef{Name: p.str(so, path, "name"), Namespace: p.str(so, path, "namespace")}
		if ref.Namespace == "" {
			ref.Namespace = c.Namespace
		}
		if ref.Name == "" && p.err == nil {
			p.fail(path+".name", "required")
		}
		c.Services = append(c.Services, ref)
	}
	res := p.list(spec, "spec", "resources")
	if len(res) != 1 && p.err == nil {
		p.fail("spec.resources", "want exactly one Listener resource, got %d", len(res))
	}
	if p.err == nil {
		c.Listener, c.StatPrefix, c.Bucket = p.listener(res[0], "spec.resources[0]")
	}
	if p.err == nil {
		if err := c.Bucket.Validate(); err != nil {
			p.fail("spec.resources[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.token_bucket", "%v", err)
		}
	}
	return c, p.err
}

// cecParser walks the decoded YAML, keeping the first error.
type cecParser struct{ err error }

func (p *cecParser) fail(field, format string, args ...any) {
	if p.err == nil {
		p.err = fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...))
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func (p *cecParser) asObj(v any, path string) map[string]any {
	if v == nil {
		return nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		p.fail(path, "want an object, got %T", v)
	}
	return m
}

func (p *cecParser) obj(m map[string]any, path, key string) map[string]any {
	return p.asObj(m[key], join(path, key))
}

func (p *cecParser) list(m map[string]any, path, key string) []any {
	v, ok := m[key]
	if !ok || v == nil {
		return nil
	}
	l, ok := v.([]any)
	if !ok {
		p.fail(join(path, key), "want a list, got %T", v)
	}
	return l
}

func (p *cecParser) str(m map[string]any, path, key string) string {
	v, ok := m[key]
	if !ok || v == nil {
		return ""
	}
	s, ok := v.(string)
	if !ok {
		p.fail(join(path, key), "want a string, got %T", v)
	}
	return s
}

func (p *cecParser) uint(m map[string]any, path, key string, def uint32) uint32 {
	v, ok := m[key]
	if !ok || v == nil {
		return def
	}
	var n float64
	switch x := v.(type) {
	case int:
		n = float64(x)
	case int64:
		n = float64(x)
	case float64:
		n = x
	default:
		p.fail(join(path, key), "want a number, got %T", v)
		return def
	}
	if n < 0 || n > 1<<32-1 || n != float64(uint32(n)) {
		p.fail(join(path, key), "%v is not an unsigned 32-bit integer", v)
		return def
	}
	return uint32(n)
}

// only refuses keys other than allowed ("@type" is always allowed).
func (p *cecParser) only(m map[string]any, path string, allowed ...string) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k != "@type" && !slices.Contains(allowed, k) {
			p.fail(join(path, k), "not supported by Bulwark (only %s)", strings.Join(allowed, ", "))
		}
	}
}

func (p *cecParser) typed(m map[string]any, path, want string) {
	if t := p.str(m, path, "@type"); t != want {
		p.fail(join(path, "@type"), "%q is not supported (want %s)", t, want)
	}
}

func (p *cecParser) listener(v any, path string) (name, statPrefix string, bucket TokenBucketConfig) {
	l := p.asObj(v, path)
	p.typed(l, path, typeListener)
	p.only(l, path, "name", "filter_chains")
	name = p.str(l, path, "name")
	chains := p.list(l, path, "filter_chains")
	if len(chains) != 1 {
		p.fail(join(path, "filter_chains"), "want exactly one filter chain, got %d", len(chains))
		return
	}
	cp := path + ".filter_chains[0]"
	chain := p.asObj(chains[0], cp)
	p.only(chain, cp, "filters")
	filters := p.list(chain, cp, "filters")
	if len(filters) != 1 {
		p.fail(join(cp, "filters"), "want exactly one filter (envoy.filters.network.http_connection_manager), got %d", len(filters))
		return
	}
	fp := cp + ".filters[0]"
	f := p.asObj(filters[0], fp)
	p.only(f, fp, "name", "typed_config")
	if n := p.str(f, fp, "name"); n != "envoy.filters.network.http_connection_manager" {
		p.fail(join(fp, "name"), "network filter %q is not supported (only envoy.filters.network.http_connection_manager)", n)
	}
	hp := fp + ".typed_config"
	hcm := p.obj(f, fp, "typed_config")
	p.typed(hcm, hp, typeHCM)
	p.only(hcm, hp, "stat_prefix", "http_filters")
	var sawLimit bool
	for i, hf := range p.list(hcm, hp, "http_filters") {
		hfp := fmt.Sprintf("%s.http_filters[%d]", hp, i)
		h := p.asObj(hf, hfp)
		p.only(h, hfp, "name", "typed_config")
		switch n := p.str(h, hfp, "name"); n {
		case "envoy.filters.http.router":
			if tc := p.obj(h, hfp, "typed_config"); tc != nil {
				p.typed(tc, join(hfp, "typed_config"), typeRouter)
				p.only(tc, join(hfp, "typed_config"))
			}
		case "envoy.filters.http.local_ratelimit":
			if sawLimit {
				p.fail(join(hfp, "name"), "a second local_ratelimit filter is not supported")
			}
			sawLimit = true
			statPrefix, bucket = p.localRateLimit(p.obj(h, hfp, "typed_config"), join(hfp, "typed_config"))
		default:
			p.fail(join(hfp, "name"), "HTTP filter %q is not supported (only envoy.filters.http.local_ratelimit and envoy.filters.http.router)", n)
		}
	}
	if !sawLimit {
		p.fail(join(hp, "http_filters"), "no envoy.filters.http.local_ratelimit filter: Bulwark enforces nothing else of a CiliumEnvoyConfig")
	}
	return name, statPrefix, bucket
}

func (p *cecParser) localRateLimit(m map[string]any, path string) (statPrefix string, b TokenBucketConfig) {
	if m == nil {
		p.fail(path, "required")
		return
	}
	p.typed(m, path, typeLocalRateLimit)
	p.only(m, path, "stat_prefix", "token_bucket", "filter_enabled", "filter_enforced")
	statPrefix = p.str(m, path, "stat_prefix")
	tp := join(path, "token_bucket")
	tb := p.obj(m, path, "token_bucket")
	if tb == nil {
		p.fail(tp, "required")
		return
	}
	p.only(tb, tp, "max_tokens", "tokens_per_fill", "fill_interval")
	b.MaxTokens = p.uint(tb, tp, "max_tokens", 0)
	b.TokensPerFill = p.uint(tb, tp, "tokens_per_fill", 1)
	if s := p.str(tb, tp, "fill_interval"); s == "" {
		p.fail(join(tp, "fill_interval"), "required")
	} else if d, err := time.ParseDuration(s); err != nil {
		p.fail(join(tp, "fill_interval"), "%q is not a duration", s)
	} else {
		b.FillInterval = d
	}
	for _, k := range []string{"filter_enabled", "filter_enforced"} {
		p.fullPercent(p.obj(m, path, k), join(path, k))
	}
	return statPrefix, b
}

// fullPercent accepts an absent or 100% runtime fractional percent (the
// runtime key cannot override it: Bulwark has no runtime layer).
func (p *cecParser) fullPercent(m map[string]any, path string) {
	if m == nil {
		return
	}
	p.only(m, path, "runtime_key", "default_value")
	dv := p.obj(m, path, "default_value")
	dp := join(path, "default_value")
	p.only(dv, dp, "numerator", "denominator")
	num := p.uint(dv, dp, "numerator", 0)
	var den uint32
	switch d := p.str(dv, dp, "denominator"); d {
	case "", "HUNDRED":
		den = 100
	case "TEN_THOUSAND":
		den = 10000
	case "MILLION":
		den = 1000000
	default:
		p.fail(join(dp, "denominator"), "unknown denominator %q", d)
		return
	}
	if num < den {
		p.fail(join(dp, "numerator"), "%d/%d: only 100%% is supported (a partial or disabled limit would not be enforced as written)", num, den)
	}
}
