package e2e

import (
	"testing"

	"github.com/bulwark-net/bulwark/test/sandboxtest"
)

// TestIPv6Policy: in a dual-stack sandbox, pod-to-pod IPv6 traffic is
// enforced by identity exactly as IPv4 is. Every address of a pod resolves
// to its identity, so under default deny a label-based allow admits the
// right peer over IPv6 and nobody else (an IPv6 pod address taken for the
// world's would either fail closed for everyone or let in anyone a world
// rule admits).
func TestIPv6Policy(t *testing.T) {
	t.Parallel()
	s := sandboxtest.New(t, sandboxtest.Options{Prefix: "e2e-6"})
	s.MustRun("up", "--ipv6", "-f", sandboxtest.Seed(t, "sample-app.yaml"))

	backend := s.Pod("deploy/backend")
	var v6 string
	for _, a := range backend.IPs {
		if a.Is6() && !a.Is4In6() {
			v6 = a.String()
		}
	}
	if v6 == "" {
		t.Fatalf("backend %s has no IPv6 address: %v", backend.Name, backend.IPs)
	}
	url := "http://[" + v6 + "]:8080/over-v6"
	s.ExpectHTTP("deploy/frontend", url, "path=/over-v6")

	s.MustRun("apply", "-f", sandboxtest.Seed(t, "default-deny.yaml"))
	s.ExpectHTTPBlocked("deploy/frontend", url)

	s.MustRun("apply", "-f", sandboxtest.Seed(t, "frontend-to-backend.yaml"), "-f", "testdata/egress-allowances.yaml")
	s.ExpectHTTP("deploy/frontend", url, "pod="+backend.Namespace+"/")
	s.ExpectHTTPBlocked("deploy/database", url)
}
