package workload

import (
	"context"
	"fmt"
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
)

// startHTTP runs a workload with one HTTP port and returns its address.
func startHTTP(t *testing.T) string {
	t.Helper()
	cfg := Config{Pod: "demo/grpc-backend-0", HTTPPorts: []int{freePort(t, "tcp")}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", cfg.HTTPPorts[0])
	for i := 0; i < 100; i++ {
		if out, err := exec.Command("curl", "-sS", "--max-time", "1", "http://"+addr+"/").CombinedOutput(); err == nil && strings.Contains(string(out), "pod=") {
			return addr
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("workload on %s never answered", addr)
	return ""
}

// One HTTP port answers gRPC (health and UserService, with grpc-go), h2c
// by prior knowledge and by Upgrade (curl), and HTTP/1.1.
func TestServesGRPCAndH2C(t *testing.T) {
	addr := startHTTP(t)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, svc := range []string{"", UserService} {
		r, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q: %v %v", svc, r, err)
		}
	}
	var got structpb.Struct
	if err := cc.Invoke(ctx, MethodGetUser, wrapperspb.String("42"), &got); err != nil {
		t.Fatal(err)
	}
	if f := got.GetFields(); f["pod"].GetStringValue() != "demo/grpc-backend-0" || f["user"].GetStringValue() != "42" || f["method"].GetStringValue() != MethodGetUser {
		t.Errorf("GetUser: %v", &got)
	}
	if err := cc.Invoke(ctx, MethodListUsers, &emptypb.Empty{}, &got); err != nil || len(got.GetFields()["users"].GetListValue().GetValues()) != 2 {
		t.Errorf("ListUsers: %v %v", &got, err)
	}
	if err := cc.Invoke(ctx, "/"+UserService+"/DeleteUser", wrapperspb.String("42"), &got); status.Code(err) != codes.Unimplemented {
		t.Errorf("DeleteUser: %v, want Unimplemented", err)
	}
	for _, mode := range []string{"--http2-prior-knowledge", "--http2", "--http1.1"} {
		out, err := exec.Command("curl", "-sS", "--max-time", "5", mode, "-w", "%{http_version}", "http://"+addr+"/p").CombinedOutput()
		want := "proto=HTTP/2.0\n2"
		switch mode {
		case "--http1.1":
			want = "proto=HTTP/1.1\n1.1"
		case "--http2":
			want = "\n2" // the upgrade request is answered on stream 1 as HTTP/1.1 in Go's eyes
		}
		if err != nil || !strings.HasSuffix(string(out), want) {
			t.Errorf("curl %s: %q %v, want it to end with %q", mode, out, err, want)
		}
	}
}
