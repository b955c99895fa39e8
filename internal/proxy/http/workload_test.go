package httpproxy

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/sandbox/workload"
)

// startWorkload runs the sandbox's own workload (HTTP/1.1, h2c, gRPC) on a
// loopback port.
func startWorkload(t *testing.T, pod string) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- workload.Run(ctx, workload.Config{Pod: pod, HTTPPorts: []int{port}}) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	for range 100 {
		if c, err := net.Dial("tcp", addr.String()); err == nil {
			c.Close()
			return addr
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("workload never listened on %s", addr)
	return addr
}

const grpcPods = `
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: grpc-backend-0, namespace: demo, labels: {app: grpc-backend}}
spec: {containers: [{name: c, image: x, ports: [{name: grpc, containerPort: 9090}]}]}
status: {podIP: 10.0.9.1}
---
apiVersion: v1
kind: Pod
metadata: {name: grpc-client-0, namespace: demo, labels: {app: grpc-client}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 10.0.9.2}
`

// The seed's l7-grpc-policy.yaml, compiled by the engine, in front of the
// sandbox workload's gRPC services, called with grpc-go.
func TestSeedGRPCPolicyAgainstWorkload(t *testing.T) {
	pol := seedPolicy(t, "demo/grpc-client-0", "demo/grpc-backend-0", 9090, grpcPods, "l7-grpc-policy.yaml")
	e := newEnv(t, envOptions{dst: startWorkload(t, "demo/grpc-backend-0"), policy: pol})
	cc, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out structpb.Struct
	if err := cc.Invoke(ctx, workload.MethodGetUser, wrapperspb.String("7"), &out); err != nil || out.GetFields()["user"].GetStringValue() != "7" {
		t.Fatalf("GetUser: %v %v", &out, err)
	}
	if err := cc.Invoke(ctx, workload.MethodListUsers, &emptypb.Empty{}, &out); err != nil {
		t.Fatalf("ListUsers: %v", err)
	}
	if r, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: workload.UserService}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health Check: %v %v", r, err)
	}
	err = cc.Invoke(ctx, "/api.v1.UserService/DeleteUser", wrapperspb.String("7"), &out)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("DeleteUser: %v, want PermissionDenied from the proxy (not Unimplemented from the backend)", err)
	}
	if _, err := healthpb.NewHealthClient(cc).List(ctx, &healthpb.HealthListRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("health List: %v, want PermissionDenied", err)
	}
	// The connection survives denials.
	if err := cc.Invoke(ctx, workload.MethodGetUser, wrapperspb.String("8"), &out); err != nil {
		t.Fatalf("GetUser after denials: %v", err)
	}
}

// h2c by Upgrade through the proxy to a backend that also upgrades: the
// upgrade is the proxy's, the backend gets a plain request.
func TestH2CUpgradeToWorkload(t *testing.T) {
	e := newEnv(t, envOptions{dst: startWorkload(t, "demo/web-0"), policy: ingress("demo/p", resolved.HTTPRule{Path: "/ok"})})
	for path, want := range map[string]string{"/ok": "200 2", "/no": "403 2"} {
		out, err := exec.Command("curl", "-sS", "--max-time", "5", "--http2", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", e.url(path)).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != want {
			t.Errorf("curl --http2 %s: %q %v, want %q", path, out, err, want)
		}
	}
	out, err := exec.Command("curl", "-sS", "--max-time", "5", "--http2-prior-knowledge", e.url("/ok")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "pod=demo/web-0") || !strings.Contains(string(out), "proto=HTTP/2.0") {
		t.Errorf("prior knowledge to the workload: %q %v", out, err)
	}
}
