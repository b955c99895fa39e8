package e2e

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bulwark-net/bulwark/internal/agent"
	"github.com/bulwark-net/bulwark/test/sandboxtest"
)

// dnsQueryPy asks the pod's nameserver (or the server given) for name over
// UDP or TCP with a raw query (python3 from the host, in the pod's network
// namespace) and prints the answer's rcode, or -1 when no answer came
// within a second.
const dnsQueryPy = `
import socket, struct, sys
name, proto = sys.argv[1], sys.argv[2]
server = sys.argv[3] if len(sys.argv) > 3 else [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
try:
    if proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1)
        s.sendto(q, (server, 53))
        r = s.recv(4096)
    else:
        s = socket.create_connection((server, 53), timeout=1)
        s.settimeout(1)
        s.sendall(struct.pack(">H", len(q)) + q)
        r = s.recv(4096)[2:]
    print(r[3] & 15)
except OSError:
    print(-1)
`

func dnsRcode(t *testing.T, s *sandboxtest.Instance, from, name string, args ...string) string {
	t.Helper()
	if len(args) == 0 {
		args = []string{"udp"}
	}
	out, _ := s.Exec(from, append([]string{"python3", "-c", dnsQueryPy, name}, args...)...)
	return strings.TrimSpace(out)
}

// TestDNSProxyFQDN is issue 12's scenario: the seed's l7-dns-policy.yaml
// is warned about and its FQDN traffic stays denied (its DNS rule has no
// rules.dns, so nothing is learned); with rules.dns added, names the
// rules allow resolve through the DNS proxy and their addresses are
// allowed on 443 before the answer reaches the pod (the first connect
// works), not on 80; other names get REFUSED (a DROPPED DNS flow; NXDOMAIN
// with --dns-reject-response nxdomain); learned addresses survive an agent
// restart; an expired TTL removes access for new connections.
func TestDNSProxyFQDN(t *testing.T) {
	t.Parallel()
	s := sandboxtest.New(t, sandboxtest.Options{Prefix: "dns"})
	s.MustRun("up", "--world", "api.github.com", "--world", "s3.amazonaws.com", "--world", "www.googleapis.com",
		"-f", sandboxtest.Seed(t, "sample-app.yaml"))
	const be = "deploy/backend"

	// 1. The seed policy: warned, and denied.
	seedPolicy := sandboxtest.Seed(t, "l7-dns-policy.yaml")
	_, errOut, code := s.Run("apply", "-f", seedPolicy)
	if code != 0 {
		t.Fatalf("apply seed: exit %d: %s", code, errOut)
	}
	if !strings.Contains(errOut, "toFQDNs can never allow anything") || !strings.Contains(errOut, "spec.egress[0].toPorts[0]") {
		t.Errorf("apply of the seed's DNS policy does not warn about the missing rules.dns: %q", errOut)
	}
	if !s.Resolves(be, "api.github.com") {
		t.Fatal("api.github.com does not resolve under the seed policy (plain DNS is allowed)")
	}
	s.ExpectTCP(be, "api.github.com", "443", false)

	// 2. Corrected: DNS through the proxy, names allowed by rules.dns.
	b, err := os.ReadFile(seedPolicy)
	if err != nil {
		t.Fatal(err)
	}
	fixed := strings.Replace(string(b), "        protocol: UDP\n",
		"        protocol: ANY\n      rules:\n        dns:\n        - matchPattern: \"*.github.com\"\n        - matchName: s3.amazonaws.com\n        - matchPattern: \"**.cluster.local\"\n", 1)
	if fixed == string(b) {
		t.Fatal("seed policy changed shape: no UDP DNS port to extend")
	}
	fixedFile := filepath.Join(t.TempDir(), "l7-dns-policy-fixed.yaml")
	if err := os.WriteFile(fixedFile, []byte(fixed), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = s.Run("apply", "-f", fixedFile)
	if code != 0 || strings.Contains(errOut, "toFQDNs can never allow anything") {
		t.Fatalf("apply corrected policy: exit %d: %s", code, errOut)
	}
	// Each nc resolves first: the first connection after the answer.
	for _, h := range []string{"api.github.com", "s3.amazonaws.com"} {
		s.ExpectTCP(be, h, "443", true)
		s.ExpectTCP(be, h, "80", false)
	}
	if got := dnsRcode(t, s, be, "api.github.com"); got != "0" {
		t.Errorf("api.github.com: rcode %s, want 0 (NOERROR)", got)
	}
	// In toFQDNs but not in rules.dns: refused, never resolved (UDP and
	// TCP both pass the proxy).
	for _, proto := range []string{"udp", "tcp"} {
		if got := dnsRcode(t, s, be, "api.github.com", proto); got != "0" {
			t.Errorf("api.github.com over %s: rcode %s, want 0 (NOERROR)", proto, got)
		}
		if got := dnsRcode(t, s, be, "www.googleapis.com", proto); got != "5" {
			t.Errorf("www.googleapis.com over %s: rcode %s, want 5 (REFUSED)", proto, got)
		}
	}
	if s.Resolves(be, "www.googleapis.com") {
		t.Error("www.googleapis.com resolves although no DNS rule allows it")
	}
	flows := s.MustRun("observe", "--namespace", "demo", "--last", "1000", "-o", "compact")
	droppedFlow := false
	for _, line := range strings.Split(flows, "\n") {
		droppedFlow = droppedFlow || (strings.Contains(line, "dns-request") && strings.Contains(line, "DROPPED (DNS Query www.googleapis.com. A)"))
	}
	if !droppedFlow {
		t.Errorf("no DROPPED DNS flow for www.googleapis.com in:\n%s", flows)
	}

	// 3. Restart: what was learned is enforced again before the pod
	// re-resolves (the cache is saved every second).
	out, code := s.Exec(be, "getent", "hosts", "api.github.com")
	if code != 0 {
		t.Fatalf("getent api.github.com: %d %s", code, out)
	}
	ip, err := netip.ParseAddr(strings.Fields(out)[0])
	if err != nil {
		t.Fatal(err)
	}
	dnsFlows := s.MustRun("observe", "--namespace", "demo", "--protocol", "dns", "--last", "1000", "-o", "compact")
	if want := "DNS Answer \"" + ip.String() + "\" TTL: "; !strings.Contains(dnsFlows, want) || !strings.Contains(dnsFlows, "(Proxy api.github.com. A)") {
		t.Errorf("observe --protocol dns has no answer flow %q for api.github.com:\n%s", want, dnsFlows)
	}
	time.Sleep(1500 * time.Millisecond)
	killAgent(t, s)
	// No proxy: DNS fails closed (no answer), never unfiltered.
	if got := dnsRcode(t, s, be, "www.googleapis.com"); got != "-1" {
		t.Errorf("DNS with the agent down: rcode %s, want no answer", got)
	}
	// The restart also switches denied answers to NXDOMAIN.
	s.MustRun("up", "--dns-reject-response", "nxdomain")
	ok := false
	for i := 0; i < 20 && !ok; i++ { // the new agent may still be syncing
		ok = s.TCP(be, ip.String(), "443")
		if !ok {
			time.Sleep(250 * time.Millisecond)
		}
	}
	if !ok {
		t.Errorf("after the restart, %s:443 (learned before it) is denied", ip)
	}
	if got := dnsRcode(t, s, be, "www.googleapis.com"); got != "3" {
		t.Errorf("www.googleapis.com with --dns-reject-response nxdomain: rcode %s, want 3 (NXDOMAIN)", got)
	}

	// 4. Expiry: TTL 5s (the sandbox DNS), then the grace; afterwards a
	// new connection by address is denied until the name is resolved
	// again.
	// A successful connection keeps its address in use: wait without
	// connecting before each attempt.
	deadline := time.Now().Add(90 * time.Second)
	for {
		time.Sleep(12 * time.Second)
		if !s.TCP(be, ip.String(), "443") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s:443 still allowed long after its TTL", ip)
		}
	}
	s.ExpectTCP(be, "api.github.com", "443", true)
}

// TestWorldAddToRunningInstance: 'bulwark world add' gives a running
// instance new world names and wildcard test zones (resolvable at once,
// served on 80 and 443); 'world remove' takes them away; the set persists
// across an agent restart.
func TestWorldAddToRunningInstance(t *testing.T) {
	t.Parallel()
	s := sandboxtest.New(t, sandboxtest.Options{Prefix: "dnsw"})
	s.MustRun("up", "-f", sandboxtest.Seed(t, "sample-app.yaml"))
	const fe = "deploy/frontend"
	if s.Resolves(fe, "api.github.com") {
		t.Fatal("api.github.com resolves before it was added")
	}
	out := s.MustRun("world", "add", "api.github.com", "*.test.example")
	if !strings.Contains(out, "*.test.example") || !strings.Contains(out, "api.github.com") {
		t.Fatalf("world add: %s", out)
	}
	for _, name := range []string{"api.github.com", "a.test.example", "deep.b.test.example"} {
		for _, port := range []string{"80", "443"} {
			s.ExpectHTTP(fe, "http://"+name+":"+port+"/", "pod=world")
		}
	}
	if s.Resolves(fe, "test.example") {
		t.Error("the zone's own name resolves; only names under it should")
	}
	s.MustRun("world", "remove", "api.github.com")
	if s.Resolves(fe, "api.github.com") {
		t.Error("api.github.com still resolves after world remove")
	}
	if _, _, code := s.Run("world", "add", "*.cluster.local"); code == 0 {
		t.Error("a zone over the cluster domain was accepted")
	}
	killAgent(t, s)
	s.MustRun("up")
	if out := s.MustRun("world", "list"); !strings.Contains(out, "*.test.example") || strings.Contains(out, "api.github.com") {
		t.Errorf("world after a restart: %s", out)
	}
	s.ExpectHTTP(fe, "http://again.test.example:443/", "pod=world")
}

// killAgent kills the instance's agent (SIGKILL: no clean shutdown) and
// waits until its lock is free.
func killAgent(t *testing.T, s *sandboxtest.Instance) {
	t.Helper()
	pid, _ := agent.RunningPID(s.Paths())
	if pid == 0 {
		t.Fatal("no agent pid")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if p, _ := agent.RunningPID(s.Paths()); p == 0 {
			return
		}
		if i > 100 {
			t.Fatalf("agent %d still holds its lock after SIGKILL", pid)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
