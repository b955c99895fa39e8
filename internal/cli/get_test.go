package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/bulwark-net/bulwark/internal/agentapi"
)

func TestPrintPods(t *testing.T) {
	pods := []agentapi.Pod{
		{Namespace: "demo", Name: "web-2", Ready: false, Status: "Pending", Node: "default", Created: time.Now()},
		{Namespace: "demo", Name: "web-1", Ready: true, Status: "Running", IP: "10.244.0.5", Node: "default", Endpoint: 3, Identity: 256,
			Labels: map[string]string{"tier": "a", "app": "web"}, Created: time.Now()},
	}
	var b bytes.Buffer
	if err := printPods(&b, pods, true, true); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d lines:\n%s", len(lines), b.String())
	}
	if f := strings.Fields(lines[0]); strings.Join(f, " ") != "NAMESPACE NAME READY STATUS AGE IP NODE ENDPOINT IDENTITY LABELS" {
		t.Errorf("header %q", lines[0])
	}
	// Sorted by name; wide shows endpoint, identity and sorted labels.
	f := strings.Fields(lines[1])
	if f[1] != "web-1" || f[2] != "1/1" || f[5] != "10.244.0.5" || f[7] != "3" || f[8] != "256" || f[9] != "app=web,tier=a" {
		t.Errorf("row %q", lines[1])
	}
	if f := strings.Fields(lines[2]); f[2] != "0/1" || f[5] != "<none>" {
		t.Errorf("row %q", lines[2])
	}

	b.Reset()
	printPods(&b, nil, false, false)
	if !strings.Contains(b.String(), "No resources found") {
		t.Errorf("empty list: %q", b.String())
	}
}

func TestPrintServicesAndPolicies(t *testing.T) {
	var b bytes.Buffer
	printServices(&b, []agentapi.Service{{Namespace: "demo", Name: "backend", Type: "ClusterIP", ClusterIP: "10.96.0.20",
		Ports: []agentapi.ServicePort{{Port: 8080, Protocol: "TCP"}, {Port: 53, Protocol: "UDP"}}}}, false, false)
	if f := strings.Fields(strings.Split(b.String(), "\n")[1]); strings.Join(f, " ") != "backend ClusterIP 10.96.0.20 8080/TCP,53/UDP" {
		t.Errorf("service row %q", f)
	}
	b.Reset()
	printPolicies(&b, []agentapi.Policy{
		{Kind: "CiliumNetworkPolicy", Namespace: "demo", Name: "b", Endpoints: 2},
		{Kind: "CiliumClusterwideNetworkPolicy", Name: "c"},
		{Kind: "NetworkPolicy", Namespace: "demo", Name: "a", Endpoints: 5},
	})
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	want := []string{"NAME KIND NAMESPACE ENDPOINTS", "c CiliumClusterwideNetworkPolicy <cluster> 0", "b CiliumNetworkPolicy demo 2", "a NetworkPolicy demo 5"}
	for i, w := range want {
		if got := strings.Join(strings.Fields(lines[i]), " "); got != w {
			t.Errorf("line %d: %q, want %q", i, got, w)
		}
	}
}

func TestGetRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"get", "pods", "-o", "yaml"},
		{"get", "pods", "-A", "-n", "demo"},
		{"get", "widgets"},
		{"bpf", "policy", "get"},
		{"bpf", "policy", "get", "--all", "3"},
		{"bpf", "policy", "get", "x"},
		{"status", "--instance", "Bad/Name"},
	} {
		root := NewRootCmd()
		root.SetArgs(append(args, "--run-dir", t.TempDir()))
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		if err := root.Execute(); err == nil {
			t.Errorf("%v: accepted", args)
		}
	}
}
