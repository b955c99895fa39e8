package agent

import (
	"os"
	"slices"
	"strings"
	"testing"
)

func TestSandboxConfigPersists(t *testing.T) {
	p := NewPaths(PathsOptions{Instance: "cfg", StateRoot: t.TempDir()})
	if err := os.MkdirAll(p.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	// First start: nothing persisted, flags decide.
	c, err := wantedSandboxConfig(p, Options{IPv6: true, World: []string{"WWW.Example.org.", "api.example.com", "api.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	if !c.IPv6 || !slices.Equal(c.World, []string{"api.example.com", "www.example.org"}) {
		t.Fatalf("first start: %+v", c)
	}
	if err := writeSandboxConfig(p, c); err != nil {
		t.Fatal(err)
	}
	// Restart without flags: everything kept.
	if got, err := wantedSandboxConfig(p, Options{}); err != nil || !got.IPv6 || !slices.Equal(got.World, c.World) {
		t.Fatalf("restart without flags: %+v %v, want %+v", got, err, c)
	}
	// New world names replace the old; IPv6 sticks.
	got, err := wantedSandboxConfig(p, Options{World: []string{"db.example.net"}})
	if err != nil || !got.IPv6 || !slices.Equal(got.World, []string{"db.example.net"}) {
		t.Fatalf("restart with --world db.example.net: %+v %v", got, err)
	}
	// Bad names and a corrupt file are errors naming the problem.
	if _, err := wantedSandboxConfig(p, Options{World: []string{"svc.cluster.local"}}); err == nil || !strings.Contains(err.Error(), "svc.cluster.local") {
		t.Errorf("cluster name as world: %v", err)
	}
	if err := os.WriteFile(sandboxConfigFile(p), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := wantedSandboxConfig(p, Options{}); err == nil || !strings.Contains(err.Error(), "sandbox.json") {
		t.Errorf("corrupt config: %v", err)
	}
}

func TestLocalDeliverySettingPersists(t *testing.T) {
	p := NewPaths(PathsOptions{Instance: "cfgld", StateRoot: t.TempDir()})
	if err := os.MkdirAll(p.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	off, on := false, true
	steps := []struct {
		flag    *bool
		wantOff bool
	}{
		{nil, false}, // a new instance: on
		{&off, true}, // --local-delivery=false
		{nil, true},  // a restart without the flag keeps it off
		{&on, false}, // --local-delivery turns it back on
		{nil, false},
	}
	for i, s := range steps {
		c, err := wantedSandboxConfig(p, Options{LocalDelivery: s.flag})
		if err != nil {
			t.Fatal(err)
		}
		if c.NoLocalDelivery != s.wantOff {
			t.Fatalf("step %d: local delivery off = %v, want %v", i, c.NoLocalDelivery, s.wantOff)
		}
		if err := writeSandboxConfig(p, c); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSandboxConfigDNSReject(t *testing.T) {
	p := NewPaths(PathsOptions{Instance: "cfg", StateRoot: t.TempDir()})
	if err := os.MkdirAll(p.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	c, err := wantedSandboxConfig(p, Options{DNSReject: "nxdomain"})
	if err != nil || c.DNSReject != "nxdomain" {
		t.Fatalf("%+v %v", c, err)
	}
	if err := writeSandboxConfig(p, c); err != nil {
		t.Fatal(err)
	}
	if got, _ := wantedSandboxConfig(p, Options{}); got.DNSReject != "nxdomain" {
		t.Fatalf("restart without the flag: %+v", got)
	}
	if _, err := wantedSandboxConfig(p, Options{DNSReject: "drop"}); err == nil || !strings.Contains(err.Error(), "refused or nxdomain") {
		t.Fatalf("bad value: %v", err)
	}
	for v, want := range map[string]int{"": 5, "refused": 5, "nxdomain": 3, "NXDOMAIN": 3} {
		if got, err := dnsRejectRcode(v); err != nil || got != want {
			t.Errorf("%q: %d %v, want %d", v, got, err, want)
		}
	}
}
