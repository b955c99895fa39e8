package observer

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	peerpb "github.com/cilium/cilium/api/v1/peer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
)

// startServer serves o on a fresh unix socket and returns a connected client.
func startServer(t *testing.T, o *Observer) (observerpb.ObserverClient, *grpc.ClientConn, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "hubble.sock")
	s, err := NewServer(ServerOptions{Observer: o, Version: "test", UnixSocket: sock, TCPAddress: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return observerpb.NewObserverClient(conn), conn, sock
}

func collect(t *testing.T, c observerpb.ObserverClient, req *observerpb.GetFlowsRequest) []*flowpb.Flow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := c.GetFlows(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var out []*flowpb.Flow
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		out = append(out, resp.GetFlow())
	}
}

func feedDemo(o *Observer) {
	evs := []event.Event{allowedSYN(1 * time.Second), deniedSYN(2 * time.Second), deniedWorld(3 * time.Second), dnsQuery(4 * time.Second)}
	for i := range evs {
		o.Handle(&evs[i])
	}
}

func ports(flows []*flowpb.Flow) []uint32 {
	var out []uint32
	for _, f := range flows {
		_, dp, _ := flowPorts(f)
		out = append(out, dp)
	}
	return out
}

func TestGetFlowsOverUnixSocket(t *testing.T) {
	o := newTestObserver(t, 0)
	feedDemo(o)
	c, _, _ := startServer(t, o)

	tests := []struct {
		name string
		req  *observerpb.GetFlowsRequest
		want []uint32 // destination ports in order
	}{
		{"all", &observerpb.GetFlowsRequest{}, []uint32{8080, 5432, 443, 53}},
		{"last 2", &observerpb.GetFlowsRequest{Number: 2}, []uint32{443, 53}},
		{"first 2", &observerpb.GetFlowsRequest{Number: 2, First: true}, []uint32{8080, 5432}},
		{"dropped", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}}}, []uint32{5432, 443}},
		{"last 1 dropped", &observerpb.GetFlowsRequest{Number: 1, Whitelist: []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}}}, []uint32{443}},
		{"since", &observerpb.GetFlowsRequest{Since: timestamppb.New(baseTime.Add(3 * time.Second))}, []uint32{443, 53}},
		{"until", &observerpb.GetFlowsRequest{Until: timestamppb.New(baseTime.Add(2 * time.Second))}, []uint32{8080, 5432}},
		{"since until", &observerpb.GetFlowsRequest{Since: timestamppb.New(baseTime.Add(2 * time.Second)), Until: timestamppb.New(baseTime.Add(3 * time.Second))}, []uint32{5432, 443}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ports(collect(t, c, tt.req))
			if len(got) != len(tt.want) {
				t.Fatalf("ports %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("ports %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func TestGetFlowsRejectsBadRequests(t *testing.T) {
	o := newTestObserver(t, 0)
	c, _, _ := startServer(t, o)
	for name, req := range map[string]*observerpb.GetFlowsRequest{
		"first with follow":  {First: true, Follow: true, Number: 1},
		"bad filter":         {Whitelist: []*flowpb.FlowFilter{{SourceIp: []string{"nope"}}}},
		"until before since": {Since: timestamppb.New(baseTime.Add(time.Hour)), Until: timestamppb.New(baseTime)},
	} {
		stream, err := c.GetFlows(context.Background(), req)
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: error %v, want InvalidArgument", name, err)
		}
	}
}

func TestGetFlowsFollow(t *testing.T) {
	o := newTestObserver(t, 0)
	feedDemo(o)
	c, _, _ := startServer(t, o)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{
		Follow: true, Number: 1,
		Whitelist: []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if _, dp, _ := flowPorts(first.GetFlow()); dp != 443 {
		t.Errorf("backlog flow to port %d, want the last drop (443)", dp)
	}
	// The follower is registered once the backlog arrived: new events now
	// reach it, filtered.
	allowed, denied := allowedSYN(10*time.Second), deniedSYN(11*time.Second)
	o.Handle(&allowed)
	o.Handle(&denied)
	next, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if _, dp, _ := flowPorts(next.GetFlow()); dp != 5432 || next.GetNodeName() != "node-1" {
		t.Errorf("followed flow to port %d on %q, want the new drop to 5432 on node-1", dp, next.GetNodeName())
	}
}

func TestFollowWithoutNumberStartsNow(t *testing.T) {
	o := newTestObserver(t, 0)
	feedDemo(o)
	c, _, _ := startServer(t, o)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	// The stream has no backlog; wait until the server registered the
	// follower (one follower in the ring), then push.
	waitFollowers(t, o, 1)
	ev := dnsQuery(20 * time.Second)
	ev.DstPort = 5353
	o.Handle(&ev)
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if _, dp, _ := flowPorts(resp.GetFlow()); dp != 5353 {
		t.Errorf("first followed flow to %d, want the new one (5353)", dp)
	}
}

func waitFollowers(t *testing.T, o *Observer, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		o.ring.mu.Lock()
		got := len(o.ring.subs)
		o.ring.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d followers registered, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestServerStatusNodesNamespacesPeers(t *testing.T) {
	o := newTestObserver(t, 3)
	feedDemo(o)
	c, conn, _ := startServer(t, o)
	ctx := context.Background()
	st, err := c.ServerStatus(ctx, &observerpb.ServerStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetNumFlows() != 3 || st.GetMaxFlows() != 3 || st.GetSeenFlows() != 4 || st.GetNumConnectedNodes().GetValue() != 1 || st.GetVersion() != "bulwark/test" {
		t.Errorf("status %v", st)
	}
	nodes, err := c.GetNodes(ctx, &observerpb.GetNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.GetNodes()) != 1 || nodes.GetNodes()[0].GetName() != "node-1" || nodes.GetNodes()[0].GetSeenFlows() != 4 {
		t.Errorf("nodes %v", nodes)
	}
	ns, err := c.GetNamespaces(ctx, &observerpb.GetNamespacesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ns.GetNamespaces()) != 1 || ns.GetNamespaces()[0].GetNamespace() != "demo" {
		t.Errorf("namespaces %v", ns)
	}
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	peers, err := peerpb.NewPeerClient(conn).Notify(pctx, &peerpb.NotifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := peers.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if p.GetName() != "node-1" || p.GetType() != peerpb.ChangeNotificationType_PEER_ADDED {
		t.Errorf("peer %v", p)
	}
}

func TestServerNeedsAListener(t *testing.T) {
	o := newTestObserver(t, 0)
	if _, err := NewServer(ServerOptions{Observer: o}); err == nil {
		t.Error("a server without listeners must be rejected")
	}
	if _, err := NewServer(ServerOptions{UnixSocket: "/x"}); err == nil {
		t.Error("a server without observer must be rejected")
	}
}

// TestSlowFollowStreamLosesCountedFlows: a client that does not read makes
// its stream lose flows, never the producer wait; every flow is then either
// delivered or reported lost.
func TestSlowFollowStreamLosesCountedFlows(t *testing.T) {
	o := newTestObserver(t, 0)
	sock := filepath.Join(t.TempDir(), "hubble.sock")
	s, err := NewServer(ServerOptions{Observer: o, UnixSocket: sock, FollowBuffer: 4})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	// A fixed, small flow-control window: the server's sends block once the
	// unread client buffer is full.
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := observerpb.NewObserverClient(conn).GetFlows(ctx, &observerpb.GetFlowsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFollowers(t, o, 1)

	const pushed = 20000 // far more than the window holds
	ev := allowedSYN(0)
	for i := 0; i < pushed; i++ {
		o.Handle(&ev) // returns although nobody reads
	}
	if o.Ring().Lost() == 0 {
		t.Fatal("a stream that does not read lost no flow: the producer must have waited")
	}

	// Read everything; lost counts ride on the next delivered flow, so keep
	// offering marker flows until every flow is accounted for.
	var delivered, lost uint64
	markers := uint64(0)
	responses := make(chan *observerpb.GetFlowsResponse)
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				close(responses)
				return
			}
			responses <- resp
		}
	}()
	deadline := time.After(60 * time.Second)
	for delivered+lost < pushed+markers || markers == 0 {
		select {
		case resp, ok := <-responses:
			if !ok {
				t.Fatal("stream ended")
			}
			if l := resp.GetLostEvents(); l != nil {
				lost += l.GetNumEventsLost()
			} else {
				delivered++
			}
		case <-time.After(50 * time.Millisecond):
			o.Handle(&ev)
			markers++
		case <-deadline:
			t.Fatalf("delivered %d + lost %d, want %d", delivered, lost, pushed+markers)
		}
	}
	if delivered+lost != pushed+markers || lost != o.Ring().Lost() {
		t.Errorf("delivered %d + reported lost %d != pushed %d (ring counted %d lost)", delivered, lost, pushed+markers, o.Ring().Lost())
	}
}

func TestGetFlowsFieldMask(t *testing.T) {
	o := newTestObserver(t, 0)
	feedDemo(o)
	c, _, _ := startServer(t, o)
	flows := collect(t, c, &observerpb.GetFlowsRequest{Number: 1, FieldMask: &fieldmaskpb.FieldMask{
		Paths: []string{"verdict", "source.pod_name", "l4", "destination", "destination.identity", "egress_denied_by"},
	}})
	if len(flows) != 1 {
		t.Fatalf("%d flows", len(flows))
	}
	f := flows[0]
	want := &flowpb.Flow{
		Verdict:     flowpb.Verdict_FORWARDED,
		Source:      &flowpb.Endpoint{PodName: "frontend-7d4b9c"},
		L4:          &flowpb.Layer4{Protocol: &flowpb.Layer4_UDP{UDP: &flowpb.UDP{SourcePort: 40000, DestinationPort: 53}}},
		Destination: o.Ring().Snapshot()[3].GetDestination(),
	}
	if !proto.Equal(f, want) {
		t.Errorf("masked flow\n got %v\nwant %v", f, want)
	}
	stream, err := c.GetFlows(context.Background(), &observerpb.GetFlowsRequest{FieldMask: &fieldmaskpb.FieldMask{Paths: []string{"no_such_field"}}})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("unknown field in mask: %v, want InvalidArgument", err)
	}
}
