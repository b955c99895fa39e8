package agent

import (
	"strings"
	"testing"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/offline/validate"
)

// A CiliumEnvoyConfig would set a rate limit that nothing enforces yet:
// apply refuses it (rule zero) instead of keeping it as an ignored object,
// and names the file and object. Deleting one stays possible.
func TestApplyRefusesEnvoyConfig(t *testing.T) {
	doc := agentapi.Document{Source: "rl.yaml", Data: []byte(`apiVersion: cilium.io/v2
kind: CiliumEnvoyConfig
metadata: {name: rate-limit-config, namespace: backend}
spec:
  services: [{name: api-server, namespace: backend}]
`)}
	_, err := validate.Documents([]agentapi.Document{doc}, true)
	if err == nil {
		t.Fatal("apply accepted a CiliumEnvoyConfig that nothing enforces")
	}
	for _, want := range []string{"rl.yaml", "CiliumEnvoyConfig backend/rate-limit-config", "refused"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if _, err := validate.Documents([]agentapi.Document{doc}, false); err != nil {
		t.Errorf("delete of a CiliumEnvoyConfig refused: %v", err)
	}
}
