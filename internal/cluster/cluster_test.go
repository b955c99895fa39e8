package cluster

import (
	"net/netip"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"default", "a", "t1234567abc", "x-1"} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Default", "-a", "a-", "toolongname1", "a_b", "a/b"} {
		if err := ValidateName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestOptionsDefaultsRejectBadInput(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{Name: "ok", Nodes: -1}, "--nodes -1"},
		{Options{Name: "ok", Nodes: 51}, "--nodes 51"},
		{Options{Name: "ok", CNI: "flannel"}, `--cni "flannel"`},
		{Options{Name: "Bad"}, "cluster name"},
		{Options{Name: "ok", Manifests: []string{"/nonexistent/app.yaml"}}, "-f /nonexistent/app.yaml"},
	} {
		err := tc.o.defaults()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err %v, want %q", tc.o, err, tc.want)
		}
	}
}

func TestDNSIP(t *testing.T) {
	if got := dnsIP(netip.MustParsePrefix("10.96.0.0/16")); got != netip.MustParseAddr("10.96.0.10") {
		t.Errorf("dnsIP = %s", got)
	}
}

func TestUnescape(t *testing.T) {
	if got := unescape(`/var/lib/a\040b`); got != "/var/lib/a b" {
		t.Errorf("unescape = %q", got)
	}
}
