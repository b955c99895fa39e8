package validate

import (
	"strings"
	"testing"

	"github.com/bulwark-net/bulwark/internal/agentapi"
)

// A CiliumEnvoyConfig's local_ratelimit is enforced by the HTTP proxy: the
// seed's config is accepted; content Bulwark would not honour is refused
// (rule zero), naming the file, the object and the field, instead of kept
// as an ignored object. Deleting one stays possible.
func TestApplyEnvoyConfig(t *testing.T) {
	const head = `apiVersion: cilium.io/v2
kind: CiliumEnvoyConfig
metadata: {name: rate-limit-config, namespace: backend}
spec:
  services: [{name: api-server, namespace: backend}]
  resources:
  - "@type": type.googleapis.com/envoy.config.listener.v3.Listener
    name: l
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: p
          http_filters:
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: r
              token_bucket: {max_tokens: 10, tokens_per_fill: 10, fill_interval: 1s}
`
	good := agentapi.Document{Source: "rl.yaml", Data: []byte(head)}
	if _, err := Documents([]agentapi.Document{good}, true); err != nil {
		t.Fatalf("apply refused an enforceable CiliumEnvoyConfig: %v", err)
	}
	bad := agentapi.Document{Source: "rl.yaml", Data: []byte(head + "              descriptors: [{entries: [{key: k, value: v}]}]\n")}
	_, err := Documents([]agentapi.Document{bad}, true)
	if err == nil {
		t.Fatal("apply accepted a CiliumEnvoyConfig with descriptors, which nothing enforces")
	}
	for _, want := range []string{"rl.yaml", "CiliumEnvoyConfig backend/rate-limit-config", "refused", "descriptors"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if _, err := Documents([]agentapi.Document{bad}, false); err != nil {
		t.Errorf("delete of a CiliumEnvoyConfig refused: %v", err)
	}
}
