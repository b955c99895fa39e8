package workload

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// UserService is the gRPC echo service every HTTP port serves, under the
// name the seed's l7-grpc-policy.yaml allows. It is defined without
// generated code: requests and replies are well-known protobuf types.
//
//	/api.v1.UserService/GetUser   (google.protobuf.StringValue user id) -> google.protobuf.Struct
//	/api.v1.UserService/ListUsers (google.protobuf.Empty or any message) -> google.protobuf.Struct
//
// Each reply carries "pod", "method", "client" and, for GetUser, "user".
const UserService = "api.v1.UserService"

// Full method names of UserService.
const (
	MethodGetUser   = "/" + UserService + "/GetUser"
	MethodListUsers = "/" + UserService + "/ListUsers"
)

// userServer is UserService's handler type (grpc.ServiceDesc needs one).
type userServer interface{ pod() string }

type userService struct{ podName string }

func (s userService) pod() string { return s.podName }

func (s userService) reply(ctx context.Context, method string, extra map[string]any) (*structpb.Struct, error) {
	fields := map[string]any{"pod": s.podName, "method": method}
	if p, ok := peer.FromContext(ctx); ok {
		fields["client"] = p.Addr.String()
	}
	for k, v := range extra {
		fields[k] = v
	}
	return structpb.NewStruct(fields)
}

var userServiceDesc = grpc.ServiceDesc{
	ServiceName: UserService,
	HandlerType: (*userServer)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "GetUser", Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var id wrapperspb.StringValue
			if err := dec(&id); err != nil {
				return nil, err
			}
			if id.GetValue() == "" {
				return nil, status.Error(codes.InvalidArgument, "user id required")
			}
			return srv.(userService).reply(ctx, MethodGetUser, map[string]any{"user": id.GetValue()})
		}},
		{MethodName: "ListUsers", Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var req structpb.Struct // accepts Empty (no fields) as well
			if err := dec(&req); err != nil {
				return nil, err
			}
			return srv.(userService).reply(ctx, MethodListUsers, map[string]any{"users": []any{"alice", "bob"}})
		}},
	},
	Metadata: "bulwark/workload",
}

// newGRPCServer serves grpc.health.v1.Health (SERVING for "" and
// UserService) and UserService.
func newGRPCServer(pod string) *grpc.Server {
	s := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(UserService, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, hs)
	s.RegisterService(&userServiceDesc, userService{podName: pod})
	return s
}

// appHandler serves one HTTP port: gRPC (content-type application/grpc,
// HTTP/2 only), h2c upgrades, and plain HTTP answered by web. With the
// server's UnencryptedHTTP2 protocol it speaks HTTP/1.1, h2c by prior
// knowledge and h2c by Upgrade on the same port.
func appHandler(pod string, web http.Handler) http.Handler {
	gs := newGRPCServer(pod)
	h2 := &http2.Server{}
	var self http.Handler
	self = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc"):
			gs.ServeHTTP(w, r)
		case r.ProtoMajor == 1 && httpguts.HeaderValuesContainsToken(r.Header["Upgrade"], "h2c") &&
			httpguts.HeaderValuesContainsToken(r.Header["Connection"], "HTTP2-Settings"):
			if err := upgradeH2C(w, r, h2, self); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
			}
		default:
			web.ServeHTTP(w, r)
		}
	})
	return self
}

// upgradeH2C switches an HTTP/1.1 connection to HTTP/2 (RFC 7540 section
// 3.2) and serves it; the upgrade request is answered as stream 1.
func upgradeH2C(w http.ResponseWriter, r *http.Request, h2 *http2.Server, h http.Handler) error {
	vs := r.Header["Http2-Settings"]
	if len(vs) != 1 {
		return errors.New("want one HTTP2-Settings header")
	}
	settings, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(vs[0], "="))
	if err != nil {
		return fmt.Errorf("HTTP2-Settings: %w", err)
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return err
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	// Stream 1 answers the upgrade request itself: not an upgrade again.
	for _, k := range []string{"Upgrade", "Connection", "Http2-Settings"} {
		r.Header.Del(k)
	}
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"); err != nil {
		return nil
	}
	if err := rw.Flush(); err != nil {
		return nil
	}
	h2.ServeConn(&bufferedConn{Conn: conn, r: rw.Reader}, &http2.ServeConnOpts{Context: r.Context(), Handler: h, UpgradeRequest: r, Settings: settings})
	return nil
}

type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(b []byte) (int, error) { return c.r.Read(b) }
