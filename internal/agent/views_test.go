package agent

import (
	"testing"

	"github.com/bulwark-net/bulwark/internal/datapath"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

func TestEndpointPolicyView(t *testing.T) {
	d := &datapath.EndpointDump{
		Endpoint: datapath.Endpoint{ID: 7, Identity: 300}, Ready: true, EnforceIngress: true,
		Entries: []datapath.DumpEntry{
			{Direction: resolved.Ingress, Selector: 1, Identities: []identity.NumericIdentity{301, identity.World}, Proto: resolved.ProtoTCP,
				PortLo: 8080, PortHi: 8080, Verdict: resolved.Allow, Policies: []resolved.PolicyRef{{Kind: "CiliumNetworkPolicy", Namespace: "demo", Name: "a"}}},
			{Direction: resolved.Egress, Selector: 2, Proto: resolved.ProtoUDP, PortLo: 0, PortHi: 65535, Verdict: resolved.Deny},
			{Direction: resolved.Egress, Selector: 3, Identities: []identity.NumericIdentity{256}, Proto: resolved.ProtoAny, PortLo: 0, PortHi: 65535, Verdict: resolved.Allow},
			{Direction: resolved.Egress, Selector: 3, Identities: []identity.NumericIdentity{256}, Proto: resolved.ProtoTCP, PortLo: 1000, PortHi: 2000, Verdict: resolved.Redirect},
		},
	}
	v := endpointPolicyView(d, "demo/web", 42)
	if v.EndpointID != 7 || v.Revision != 42 || v.IngressEnforcement != "enabled" || v.EgressEnforcement != "disabled" {
		t.Errorf("header %+v", v)
	}
	want := []struct{ dir, peer, port, verdict string }{
		{"Ingress", "301,reserved:world", "8080/TCP", "allow"},
		{"Egress", "selector 2 (no identities)", "ANY/UDP", "deny"},
		{"Egress", "256", "ANY", "allow"},
		{"Egress", "256", "1000-2000/TCP", "redirect"},
	}
	for i, w := range want {
		e := v.Entries[i]
		if e.Direction != w.dir || e.Peer != w.peer || e.Port != w.port || e.Verdict != w.verdict {
			t.Errorf("entry %d = %+v, want %+v", i, e, w)
		}
	}
	if len(v.Entries[0].Policies) != 1 || v.Entries[0].Policies[0] != "CiliumNetworkPolicy/demo/a" {
		t.Errorf("policies %v", v.Entries[0].Policies)
	}
	d.Ready = false
	if endpointPolicyView(d, "demo/web", 42).Revision != 0 {
		t.Error("a not-ready endpoint reports a revision")
	}
}
