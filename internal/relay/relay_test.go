package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/observer"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// The test cluster: pods in namespace "demo" on both nodes, "alpha" only
// on node-a and "beta" only on node-b. Node n's pods are 10.0.n.x.
var pods = map[netip.Addr]observer.EndpointInfo{
	netip.MustParseAddr("10.0.1.10"): {ID: 11, Identity: 1011, Namespace: "demo", PodName: "client-a"},
	netip.MustParseAddr("10.0.1.20"): {ID: 12, Identity: 1012, Namespace: "alpha", PodName: "server-a"},
	netip.MustParseAddr("10.0.2.10"): {ID: 21, Identity: 1021, Namespace: "demo", PodName: "client-b"},
	netip.MustParseAddr("10.0.2.20"): {ID: 22, Identity: 1022, Namespace: "beta", PodName: "server-b"},
}

// podResolver gives the observer the test cluster's pods.
type podResolver struct{}

func (podResolver) EndpointByID(id uint32) (observer.EndpointInfo, bool) {
	for _, e := range pods {
		if e.ID == id {
			return e, true
		}
	}
	return observer.EndpointInfo{}, false
}
func (podResolver) EndpointByIP(ip netip.Addr) (observer.EndpointInfo, bool) {
	e, ok := pods[ip]
	return e, ok
}
func (podResolver) IdentityLabels(identity.NumericIdentity) []string                  { return nil }
func (podResolver) RulePolicies(uint32) []resolved.PolicyRef                          { return nil }
func (podResolver) SelectingPolicies(uint32, resolved.Direction) []resolved.PolicyRef { return nil }

var baseTime = time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)

// node is one real observer served over gRPC on a unix socket.
type node struct {
	name string
	obs  *observer.Observer
	srv  *observer.Server
	sock string
}

// startNode serves a fresh observer for node n (1 = node-a, 2 = node-b...).
func startNode(t *testing.T, n int) *node {
	t.Helper()
	name := fmt.Sprintf("node-%c", 'a'+n-1)
	o, err := observer.New(observer.Options{NodeName: name, Resolver: podResolver{}})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "hubble.sock")
	s, err := observer.NewServer(observer.ServerOptions{Observer: o, Version: "test", UnixSocket: sock})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return &node{name: name, obs: o, srv: s, sock: sock}
}

// conn records one connection seen on node n at base+sec seconds: from
// the node's client pod to its server pod on port 1000+sec, dropped when
// drop is set. The port identifies the flow in the tests.
func (nd *node) conn(n, sec int, drop bool) {
	src := netip.AddrFrom4([4]byte{10, 0, byte(n), 10})
	dst := netip.AddrFrom4([4]byte{10, 0, byte(n), 20})
	ev := event.Event{
		Time: baseTime.Add(time.Duration(sec) * time.Second), Type: event.TypePolicyVerdict,
		EndpointID: pods[dst].ID, Direction: resolved.Ingress, Verdict: event.Forwarded,
		SrcIdentity: pods[src].Identity, DstIdentity: pods[dst].Identity, Src: src, Dst: dst,
		SrcPort: 40000, DstPort: uint16(1000 + sec), Proto: resolved.ProtoTCP, TCPFlags: 0x02, Bytes: 60,
	}
	if drop {
		ev.Type, ev.Verdict, ev.Reason = event.TypeDrop, event.Dropped, event.ReasonPolicyDenied
	}
	nd.obs.Handle(&ev)
}

// twoNodes: node-a saw connections at 1, 3, 5 s, node-b at 2, 4, 6 s; the
// ones at 3 and 4 s were dropped.
func twoNodes(t *testing.T) (a, b *node) {
	a, b = startNode(t, 1), startNode(t, 2)
	for _, sec := range []int{1, 3, 5} {
		a.conn(1, sec, sec == 3)
	}
	for _, sec := range []int{2, 4, 6} {
		b.conn(2, sec, sec == 4)
	}
	return a, b
}

// serve runs r on a unix socket and returns a client of it.
func serve(t *testing.T, r *Relay) observerpb.ObserverClient {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "relay.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	r.Register(s)
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return observerpb.NewObserverClient(conn)
}

func newRelay(t *testing.T, opts Options, peers ...Peer) *Relay {
	t.Helper()
	opts.Peers = peers
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func peerOf(nd *node) Peer { return Peer{Name: nd.name, Address: "unix://" + nd.sock} }

// downPeer is a node whose agent is not running: no socket.
func downPeer(t *testing.T) Peer {
	return Peer{Name: "node-c", Address: filepath.Join(t.TempDir(), "hubble.sock")}
}

// collect reads a stream to its end.
func collect(t *testing.T, c observerpb.ObserverClient, req *observerpb.GetFlowsRequest) ([]*observerpb.GetFlowsResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := c.GetFlows(ctx, req)
	if err != nil {
		return nil, err
	}
	var out []*observerpb.GetFlowsResponse
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, resp)
	}
}

// ports are the flows' destination ports, i.e. their seconds + 1000.
func ports(resps []*observerpb.GetFlowsResponse) []uint32 {
	var out []uint32
	for _, r := range resps {
		if f := r.GetFlow(); f != nil {
			out = append(out, f.GetL4().GetTCP().GetDestinationPort())
		}
	}
	return out
}

func nodeStatuses(resps []*observerpb.GetFlowsResponse) []*relaypb.NodeStatusEvent {
	var out []*relaypb.NodeStatusEvent
	for _, r := range resps {
		if s := r.GetNodeStatus(); s != nil {
			out = append(out, s)
		}
	}
	return out
}

func TestGetFlowsMergesByTime(t *testing.T) {
	a, b := twoNodes(t)
	c := serve(t, newRelay(t, Options{}, peerOf(a), peerOf(b)))
	dropped := []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}}
	tests := []struct {
		name string
		req  *observerpb.GetFlowsRequest
		want []uint32
	}{
		{"all", &observerpb.GetFlowsRequest{}, []uint32{1001, 1002, 1003, 1004, 1005, 1006}},
		// Each node answers its own last 2; the merge keeps the last 2 of all.
		{"last 2", &observerpb.GetFlowsRequest{Number: 2}, []uint32{1005, 1006}},
		{"last 3", &observerpb.GetFlowsRequest{Number: 3}, []uint32{1004, 1005, 1006}},
		{"first 3", &observerpb.GetFlowsRequest{Number: 3, First: true}, []uint32{1001, 1002, 1003}},
		{"more than stored", &observerpb.GetFlowsRequest{Number: 100}, []uint32{1001, 1002, 1003, 1004, 1005, 1006}},
		{"whitelist", &observerpb.GetFlowsRequest{Whitelist: dropped}, []uint32{1003, 1004}},
		{"whitelist last 1", &observerpb.GetFlowsRequest{Whitelist: dropped, Number: 1}, []uint32{1004}},
		{"blacklist", &observerpb.GetFlowsRequest{Blacklist: dropped}, []uint32{1001, 1002, 1005, 1006}},
		{"namespace on one node", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{DestinationPod: []string{"beta/"}}}}, []uint32{1002, 1004, 1006}},
		{"node name", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{NodeName: []string{"node-a"}}}}, []uint32{1001, 1003, 1005}},
		{"since until", &observerpb.GetFlowsRequest{Since: timestamppb.New(baseTime.Add(2 * time.Second)), Until: timestamppb.New(baseTime.Add(4 * time.Second))}, []uint32{1002, 1003, 1004}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resps, err := collect(t, c, tt.req)
			if err != nil {
				t.Fatal(err)
			}
			if got := ports(resps); !slices.Equal(got, tt.want) {
				t.Errorf("ports %v, want %v", got, tt.want)
			}
			if s := nodeStatuses(resps); len(s) != 0 {
				t.Errorf("node status events %v with every peer up", s)
			}
		})
	}
}

// TestFieldMaskWithoutTime: the merge still orders by time, and the
// client gets only the fields it asked for.
func TestFieldMaskWithoutTime(t *testing.T) {
	a, b := twoNodes(t)
	c := serve(t, newRelay(t, Options{SortWindow: time.Hour}, peerOf(a), peerOf(b)))
	mask := &fieldmaskpb.FieldMask{Paths: []string{"l4", "node_name"}}
	for _, follow := range []bool{false, true} {
		req := &observerpb.GetFlowsRequest{FieldMask: mask}
		if follow {
			req.Follow, req.Since, req.Until = true, timestamppb.New(baseTime), timestamppb.New(baseTime.Add(time.Minute))
		}
		resps, err := collect(t, c, req)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := ports(resps), []uint32{1001, 1002, 1003, 1004, 1005, 1006}; !slices.Equal(got, want) {
			t.Errorf("follow=%v: ports %v, want %v", follow, got, want)
		}
		for _, r := range resps {
			if r.GetFlow().GetTime() != nil || r.GetTime() != nil || r.GetFlow().GetNodeName() == "" || r.GetFlow().GetVerdict() != 0 {
				t.Errorf("follow=%v: masked flow %v", follow, r)
				break
			}
		}
	}
}

func TestFlowsKeepTheirNodeName(t *testing.T) {
	a, b := twoNodes(t)
	c := serve(t, newRelay(t, Options{}, peerOf(a), peerOf(b)))
	resps, err := collect(t, c, &observerpb.GetFlowsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range resps {
		want := "node-a"
		if r.GetFlow().GetL4().GetTCP().GetDestinationPort()%2 == 0 {
			want = "node-b"
		}
		if r.GetFlow().GetNodeName() != want || r.GetNodeName() != want {
			t.Errorf("flow %d: node %q (response %q), want %q", r.GetFlow().GetL4().GetTCP().GetDestinationPort(),
				r.GetFlow().GetNodeName(), r.GetNodeName(), want)
		}
	}
}

func TestPeerDown(t *testing.T) {
	a, b := twoNodes(t)
	down := downPeer(t)
	c := serve(t, newRelay(t, Options{}, peerOf(a), down, peerOf(b)))
	ctx := context.Background()

	t.Run("GetFlows", func(t *testing.T) {
		resps, err := collect(t, c, &observerpb.GetFlowsRequest{Number: 4})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := ports(resps), []uint32{1003, 1004, 1005, 1006}; !slices.Equal(got, want) {
			t.Errorf("ports %v, want %v", got, want)
		}
		st := nodeStatuses(resps)
		if len(st) != 1 || st[0].GetStateChange() != relaypb.NodeState_NODE_UNAVAILABLE || !slices.Equal(st[0].GetNodeNames(), []string{"node-c"}) {
			t.Fatalf("node status events %v, want node-c unavailable", st)
		}
		if st[0].GetMessage() == "" {
			t.Error("the unavailable node's event gives no reason")
		}
	})
	t.Run("ServerStatus", func(t *testing.T) {
		st, err := c.ServerStatus(ctx, &observerpb.ServerStatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if st.GetNumConnectedNodes().GetValue() != 2 || st.GetNumUnavailableNodes().GetValue() != 1 {
			t.Errorf("connected %v unavailable %v, want 2 and 1", st.GetNumConnectedNodes(), st.GetNumUnavailableNodes())
		}
		if !slices.Equal(st.GetUnavailableNodes(), []string{"node-c"}) {
			t.Errorf("unavailable nodes %v, want [node-c]", st.GetUnavailableNodes())
		}
		if st.GetNumFlows() != 6 || st.GetSeenFlows() != 6 || st.GetMaxFlows() != 2*observer.DefaultCapacity {
			t.Errorf("flows %d seen %d max %d, want 6, 6, %d", st.GetNumFlows(), st.GetSeenFlows(), st.GetMaxFlows(), 2*observer.DefaultCapacity)
		}
	})
	t.Run("GetNodes", func(t *testing.T) {
		resp, err := c.GetNodes(ctx, &observerpb.GetNodesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]relaypb.NodeState{}
		for _, n := range resp.GetNodes() {
			got[n.GetName()] = n.GetState()
		}
		want := map[string]relaypb.NodeState{
			"node-a": relaypb.NodeState_NODE_CONNECTED, "node-b": relaypb.NodeState_NODE_CONNECTED,
			"node-c": relaypb.NodeState_NODE_UNAVAILABLE,
		}
		if len(resp.GetNodes()) != 3 || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("nodes %v, want %v", resp.GetNodes(), want)
		}
	})
	t.Run("GetNamespaces", func(t *testing.T) {
		resp, err := c.GetNamespaces(ctx, &observerpb.GetNamespacesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, ns := range resp.GetNamespaces() {
			got = append(got, ns.GetNamespace())
		}
		if want := []string{"alpha", "beta", "demo"}; !slices.Equal(got, want) {
			t.Errorf("namespaces %v, want %v", got, want)
		}
	})
}

// TestPeerStoppedAfterStart: a node whose agent stops after the relay
// talked to it is reported and left out the same way.
func TestPeerStoppedAfterStart(t *testing.T) {
	a, b := twoNodes(t)
	c := serve(t, newRelay(t, Options{}, peerOf(a), peerOf(b)))
	if resps, err := collect(t, c, &observerpb.GetFlowsRequest{}); err != nil || len(ports(resps)) != 6 {
		t.Fatalf("before the stop: %v flows, %v", ports(resps), err)
	}
	b.srv.Stop()
	resps, err := collect(t, c, &observerpb.GetFlowsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ports(resps), []uint32{1001, 1003, 1005}; !slices.Equal(got, want) {
		t.Errorf("ports %v, want %v", got, want)
	}
	if st := nodeStatuses(resps); len(st) != 1 || !slices.Equal(st[0].GetNodeNames(), []string{"node-b"}) {
		t.Errorf("node status events %v, want one for node-b", st)
	}
	st, err := c.ServerStatus(context.Background(), &observerpb.ServerStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetNumConnectedNodes().GetValue() != 1 || !slices.Equal(st.GetUnavailableNodes(), []string{"node-b"}) {
		t.Errorf("connected %v, unavailable %v; want 1 and [node-b]", st.GetNumConnectedNodes(), st.GetUnavailableNodes())
	}
}

func TestEveryPeerDown(t *testing.T) {
	c := serve(t, newRelay(t, Options{}, downPeer(t), Peer{Address: filepath.Join(t.TempDir(), "other.sock")}))
	for _, follow := range []bool{false, true} {
		_, err := collect(t, c, &observerpb.GetFlowsRequest{Follow: follow})
		if status.Code(err) != codes.Unavailable {
			t.Errorf("follow=%v: error %v, want Unavailable", follow, err)
		}
	}
	st, err := c.ServerStatus(context.Background(), &observerpb.ServerStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetNumConnectedNodes().GetValue() != 0 || st.GetNumUnavailableNodes().GetValue() != 2 || len(st.GetUnavailableNodes()) != 2 {
		t.Errorf("status %v, want 0 connected, 2 unavailable listed", st)
	}
}

func TestBadRequestFailsWhole(t *testing.T) {
	a, b := twoNodes(t)
	c := serve(t, newRelay(t, Options{}, peerOf(a), peerOf(b)))
	for name, req := range map[string]*observerpb.GetFlowsRequest{
		"first with follow": {First: true, Follow: true, Number: 1},
		"bad filter":        {Whitelist: []*flowpb.FlowFilter{{SourceIp: []string{"not-an-ip"}}}},
	} {
		_, err := collect(t, c, req)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: error %v, want InvalidArgument", name, err)
		}
	}
}

// TestFollowMergesBacklog: with since and an until already past, each
// node sends its backlog and ends its stream; the relay's follow path
// merges them in time order (the window is long: only the end of the
// streams releases the flows).
func TestFollowMergesBacklog(t *testing.T) {
	a, b := twoNodes(t)
	c := serve(t, newRelay(t, Options{SortWindow: time.Hour}, peerOf(a), peerOf(b)))
	resps, err := collect(t, c, &observerpb.GetFlowsRequest{
		Follow: true, Since: timestamppb.New(baseTime), Until: timestamppb.New(baseTime.Add(5 * time.Second)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ports(resps), []uint32{1001, 1002, 1003, 1004, 1005}; !slices.Equal(got, want) {
		t.Errorf("ports %v, want %v", got, want)
	}
	// With a number: the last 2 of the merge, not 2 per node.
	resps, err = collect(t, c, &observerpb.GetFlowsRequest{
		Follow: true, Number: 2, Until: timestamppb.New(baseTime.Add(5 * time.Second)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ports(resps), []uint32{1004, 1005}; !slices.Equal(got, want) {
		t.Errorf("number 2: ports %v, want %v", got, want)
	}
}

// TestFollowWithNumber: the backlog of a follow request is the last N
// flows of the merge, then new flows come.
func TestFollowWithNumber(t *testing.T) {
	a, b := twoNodes(t)
	c := serve(t, newRelay(t, Options{SortWindow: 10 * time.Millisecond}, peerOf(a), peerOf(b)))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Follow: true, Number: 3})
	if err != nil {
		t.Fatal(err)
	}
	next := func() uint32 {
		t.Helper()
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetFlow().GetL4().GetTCP().GetDestinationPort()
	}
	backlog := []uint32{next(), next(), next()}
	slices.Sort(backlog)
	if want := []uint32{1004, 1005, 1006}; !slices.Equal(backlog, want) {
		t.Errorf("backlog %v, want %v", backlog, want)
	}
	a.conn(1, 7, false)
	if got := next(); got != 1007 {
		t.Errorf("after the backlog: flow %d, want the new 1007", got)
	}
}

// TestFollowForwardsNewFlows: flows recorded on either node after the
// request reach the client, each node's in its order, filtered; a node
// that is down is reported in the stream and does not stop it.
func TestFollowForwardsNewFlows(t *testing.T) {
	a, b := startNode(t, 1), startNode(t, 2)
	c := serve(t, newRelay(t, Options{SortWindow: 10 * time.Millisecond}, peerOf(a), downPeer(t), peerOf(b)))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// since: flows recorded before a node registered the follower come as
	// its backlog, so none is missed however the goroutines interleave.
	stream, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{
		Follow: true, Since: timestamppb.New(baseTime),
		Blacklist: []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for sec := 1; sec <= 10; sec++ {
		if sec%2 == 1 {
			a.conn(1, sec, sec == 5)
		} else {
			b.conn(2, sec, sec == 6)
		}
	}
	var got []uint32
	var statuses []*relaypb.NodeStatusEvent
	for len(got) < 8 || len(statuses) == 0 {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		if s := resp.GetNodeStatus(); s != nil {
			statuses = append(statuses, s)
			continue
		}
		p := resp.GetFlow().GetL4().GetTCP().GetDestinationPort()
		if p == 1005 || p == 1006 {
			t.Errorf("dropped flow %d passed the blacklist", p)
		}
		got = append(got, p)
	}
	var fromA, fromB []uint32
	for _, p := range got {
		if p%2 == 1 {
			fromA = append(fromA, p)
		} else {
			fromB = append(fromB, p)
		}
	}
	if want := []uint32{1001, 1003, 1007, 1009}; !slices.Equal(fromA, want) {
		t.Errorf("node-a's flows %v, want %v", fromA, want)
	}
	if want := []uint32{1002, 1004, 1008, 1010}; !slices.Equal(fromB, want) {
		t.Errorf("node-b's flows %v, want %v", fromB, want)
	}
	if len(statuses) != 1 || statuses[0].GetStateChange() != relaypb.NodeState_NODE_UNAVAILABLE || !slices.Equal(statuses[0].GetNodeNames(), []string{"node-c"}) {
		t.Errorf("node status events %v, want node-c unavailable", statuses)
	}
}

// TestSortBuffer: the follow path's ordering, with the clock given.
func TestSortBuffer(t *testing.T) {
	resp := func(sec int) *observerpb.GetFlowsResponse {
		return &observerpb.GetFlowsResponse{Time: timestamppb.New(baseTime.Add(time.Duration(sec) * time.Second))}
	}
	secs := func(rs []*observerpb.GetFlowsResponse) []int64 {
		var out []int64
		for _, r := range rs {
			out = append(out, r.GetTime().GetSeconds()-baseTime.Unix())
		}
		return out
	}
	now := time.Unix(0, 0)
	b := newSortBuffer(time.Second, 4)
	for _, s := range []int{5, 3} {
		if out := b.push(resp(s), now, false); len(out) != 0 {
			t.Fatalf("push %d sent %v at once", s, secs(out))
		}
	}
	if out := b.due(now.Add(500 * time.Millisecond)); len(out) != 0 {
		t.Fatalf("within the window: sent %v", secs(out))
	}
	// A late, older flow from another peer still comes first.
	b.push(resp(1), now.Add(600*time.Millisecond), false)
	b.push(resp(9), now.Add(600*time.Millisecond), false)
	if got := secs(b.due(now.Add(time.Second))); !slices.Equal(got, []int64{1, 3, 5}) {
		t.Errorf("due after the window: %v, want [1 3 5] (9 has not waited)", got)
	}
	// Full: the oldest goes at once.
	for _, s := range []int{8, 7, 10} {
		b.push(resp(s), now.Add(time.Second), false)
	}
	if got := secs(b.push(resp(6), now.Add(time.Second), false)); !slices.Equal(got, []int64{6}) {
		t.Errorf("push into a full buffer sent %v, want [6]", got)
	}
	if got := secs(b.drain()); !slices.Equal(got, []int64{7, 8, 9, 10}) {
		t.Errorf("drain: %v", got)
	}
}

func TestParsePeer(t *testing.T) {
	for in, want := range map[string]Peer{
		"unix:///run/a.sock":        {Address: "unix:///run/a.sock"},
		"/run/a.sock":               {Address: "/run/a.sock"},
		"127.0.0.1:4245":            {Address: "127.0.0.1:4245"},
		"node-1=127.0.0.1:4245":     {Name: "node-1", Address: "127.0.0.1:4245"},
		"node-1=unix:///run/a.sock": {Name: "node-1", Address: "unix:///run/a.sock"},
		"[::1]:4245":                {Address: "[::1]:4245"},
	} {
		got, err := ParsePeer(in)
		if err != nil || got != want {
			t.Errorf("ParsePeer(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "unix://", "localhost", "node=", ":4245", "host:"} {
		if p, err := ParsePeer(bad); err == nil {
			t.Errorf("ParsePeer(%q) = %+v, want an error", bad, p)
		}
	}
}

func TestIsLocal(t *testing.T) {
	for addr, want := range map[string]bool{
		"unix:///run/a.sock": true, "/run/a.sock": true, "127.0.0.1:4245": true, "[::1]:4245": true,
		"localhost:4245": true, "10.0.0.1:4245": false, "0.0.0.0:4245": false, ":4245": false, "example.com:4245": false,
	} {
		if got := IsLocal(addr); got != want {
			t.Errorf("IsLocal(%q) = %v, want %v", addr, got, want)
		}
	}
}

func TestNewRejects(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Error("New without peers succeeded")
	}
	if _, err := New(Options{Peers: []Peer{{Address: "/a.sock"}, {Address: "unix:///a.sock"}}}); err == nil {
		t.Error("the same peer twice was accepted")
	}
	if _, err := New(Options{Peers: []Peer{{Name: "n1", Address: "nonsense"}}}); err == nil {
		t.Error("a bad address was accepted")
	}
}

// TestPeerComesBack: a node whose agent restarts is read again, without
// restarting the relay.
func TestPeerComesBack(t *testing.T) {
	a, b := twoNodes(t)
	c := serve(t, newRelay(t, Options{}, peerOf(a), peerOf(b)))
	b.srv.Stop()
	if resps, err := collect(t, c, &observerpb.GetFlowsRequest{}); err != nil || len(nodeStatuses(resps)) != 1 {
		t.Fatalf("with node-b stopped: %d node status events, %v", len(nodeStatuses(resps)), err)
	}
	s, err := observer.NewServer(observer.ServerOptions{Observer: b.obs, UnixSocket: b.sock})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	// The relay retries the peer in the background: ask until it answers.
	deadline := time.Now().Add(time.Minute)
	for {
		resps, err := collect(t, c, &observerpb.GetFlowsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if got := ports(resps); len(nodeStatuses(resps)) == 0 {
			if want := []uint32{1001, 1002, 1003, 1004, 1005, 1006}; !slices.Equal(got, want) {
				t.Errorf("ports %v, want %v", got, want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("node-b is still unavailable a minute after its restart")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFollowSurvivesPeerRestart: a followed node whose agent restarts is
// reported unavailable, then connected again, and its flows recorded in
// the meantime and after come, none twice.
func TestFollowSurvivesPeerRestart(t *testing.T) {
	a, b := startNode(t, 1), startNode(t, 2)
	c := serve(t, newRelay(t, Options{SortWindow: 10 * time.Millisecond, RetryInterval: 20 * time.Millisecond}, peerOf(a), peerOf(b)))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Follow: true, Since: timestamppb.New(baseTime)})
	if err != nil {
		t.Fatal(err)
	}
	// recv reads until the flow to port want, collecting node statuses.
	var states []relaypb.NodeState
	seen := map[uint32]int{}
	recv := func(want uint32) {
		t.Helper()
		for seen[want] == 0 {
			resp, err := stream.Recv()
			if err != nil {
				t.Fatalf("waiting for %d: %v", want, err)
			}
			if s := resp.GetNodeStatus(); s != nil {
				if !slices.Equal(s.GetNodeNames(), []string{"node-b"}) {
					t.Errorf("node status %v, want node-b's only", s)
				}
				states = append(states, s.GetStateChange())
				continue
			}
			seen[resp.GetFlow().GetL4().GetTCP().GetDestinationPort()]++
		}
	}
	a.conn(1, 1, false)
	b.conn(2, 2, false)
	recv(1001)
	recv(1002)
	b.srv.Stop()
	b.conn(2, 4, false) // while its server is down
	a.conn(1, 3, false)
	recv(1003)
	s, err := observer.NewServer(observer.ServerOptions{Observer: b.obs, UnixSocket: b.sock})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	recv(1004)
	b.conn(2, 6, false)
	recv(1006)
	for p, n := range seen {
		if n != 1 {
			t.Errorf("flow %d came %d times", p, n)
		}
	}
	if len(states) != 2 || states[0] != relaypb.NodeState_NODE_UNAVAILABLE || states[1] != relaypb.NodeState_NODE_CONNECTED {
		t.Errorf("node-b's states %v, want unavailable then connected", states)
	}
}
