package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/bulwark-net/bulwark/internal/cluster"
	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/observer"
	"github.com/bulwark-net/bulwark/internal/relay"
)

var relayBase = time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)

// startNodeServer serves a real observer named node on a temp socket, fed
// a connection to port 1000+sec at base+sec seconds for each of secs.
func startNodeServer(t *testing.T, node string, secs ...int) string {
	t.Helper()
	o, err := observer.New(observer.Options{NodeName: node, Resolver: cliResolver{}})
	if err != nil {
		t.Fatal(err)
	}
	for _, sec := range secs {
		ev := cliEvent(uint16(1000+sec), event.Forwarded)
		ev.Time = relayBase.Add(time.Duration(sec) * time.Second)
		o.Handle(ev)
	}
	sock := filepath.Join(t.TempDir(), "hubble.sock")
	s, err := observer.NewServer(observer.ServerOptions{Observer: o, UnixSocket: sock})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return sock
}

// runCLIErr runs the CLI and returns its stdout and stderr.
func runCLIErr(t *testing.T, ctx context.Context, args ...string) (string, string, error) {
	t.Helper()
	root := NewRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

// jsonFlows reads observe -o json: each flow's destination port and node.
func jsonFlows(t *testing.T, out string) (ports []uint32, nodes []string) {
	t.Helper()
	for line := range strings.Lines(out) {
		var resp observerpb.GetFlowsResponse
		if err := protojson.Unmarshal([]byte(line), &resp); err != nil {
			t.Fatalf("json line %q: %v", line, err)
		}
		if f := resp.GetFlow(); f != nil {
			ports = append(ports, f.GetL4().GetTCP().GetDestinationPort())
			nodes = append(nodes, f.GetNodeName())
		}
	}
	return ports, nodes
}

func TestObserveMergesSeveralServers(t *testing.T) {
	a := startNodeServer(t, "node-a", 1, 3, 5)
	b := startNodeServer(t, "node-b", 2, 4, 6)
	ctx := context.Background()

	out, errOut, err := runCLIErr(t, ctx, "observe", "--server", "unix://"+a, "--server", b, "--last", "4", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	ports, nodes := jsonFlows(t, out)
	if want := []uint32{1003, 1004, 1005, 1006}; !slices.Equal(ports, want) {
		t.Errorf("ports %v, want %v", ports, want)
	}
	if want := []string{"node-a", "node-b", "node-a", "node-b"}; !slices.Equal(nodes, want) {
		t.Errorf("nodes %v, want %v", nodes, want)
	}
	if errOut != "" {
		t.Errorf("stderr %q with every server up", errOut)
	}

	// A server that is down is reported; the others' flows still print.
	down := filepath.Join(t.TempDir(), "down.sock")
	out, errOut, err = runCLIErr(t, ctx, "observe", "--server", a, "--server", "node-c="+down, "--server", b, "--to-port", "1002")
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 1 || !strings.Contains(lines[0], "demo/server:1002") {
		t.Errorf("compact output:\n%s", out)
	}
	if !strings.Contains(errOut, "NODE UNAVAILABLE: node-c") {
		t.Errorf("stderr %q does not report node-c unavailable", errOut)
	}

	// None up: an error naming them.
	_, _, err = runCLIErr(t, ctx, "observe", "--server", down, "--server", filepath.Join(t.TempDir(), "x.sock"))
	if err == nil || !strings.Contains(err.Error(), "no peer answered") {
		t.Errorf("every server down: error %v", err)
	}
}

func TestObserveServerFlagErrors(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"observe", "--server", "nohost"}, `--server "nohost"`},
		{[]string{"observe", "--server", "/a.sock", "--server", "unix:///a.sock"}, "given twice"},
		{[]string{"observe", "--cluster", "x", "--server", "/a.sock"}, "--cluster cannot be combined with --server"},
		{[]string{"observe", "--cluster", "x", "--instance", "y"}, "--cluster cannot be combined with --instance"},
		{[]string{"observe", "--cluster", "Bad_Name"}, "cluster name"},
	} {
		_, _, err := runCLIErr(t, ctx, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: error %v, want one mentioning %s", tt.args, err, tt.want)
		}
	}
}

func TestRelayCommand(t *testing.T) {
	a := startNodeServer(t, "node-a", 1, 3)
	b := startNodeServer(t, "node-b", 2, 4)
	down := filepath.Join(t.TempDir(), "down.sock")
	sock := filepath.Join(t.TempDir(), "relay.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, _, err := runCLIErr(t, ctx, "relay", "--peer", "node-a="+a, "--peer", "node-b=unix://"+b, "--peer", "node-c="+down, "--listen", "unix://"+sock)
		done <- err
	}()
	// Wait for the relay's socket (or its failure).
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("relay ended: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}

	out, errOut, err := runCLIErr(t, ctx, "observe", "--server", sock, "--all", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if ports, _ := jsonFlows(t, out); !slices.Equal(ports, []uint32{1001, 1002, 1003, 1004}) {
		t.Errorf("ports through the relay %v", ports)
	}
	if !strings.Contains(errOut, "NODE UNAVAILABLE: node-c") {
		t.Errorf("stderr %q does not report node-c unavailable", errOut)
	}

	// What `hubble status` asks.
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := observerpb.NewObserverClient(conn).ServerStatus(ctx, &observerpb.ServerStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetNumFlows() != 4 || st.GetNumConnectedNodes().GetValue() != 2 || st.GetNumUnavailableNodes().GetValue() != 1 ||
		!slices.Equal(st.GetUnavailableNodes(), []string{"node-c"}) {
		t.Errorf("server status %v", st)
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("relay after cancel: %v", err)
	}
}

func TestRelayCommandRejects(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"relay"}, "no peers"},
		{[]string{"relay", "--peer", "nohost"}, `--peer "nohost"`},
		{[]string{"relay", "--peer", "/a.sock", "--listen", "0.0.0.0:4245"}, "--listen 0.0.0.0:4245: not a unix socket or a loopback address"},
		{[]string{"relay", "--peer", "10.1.2.3:4245"}, "--peer 10.1.2.3:4245: not a unix socket or a loopback address"},
		{[]string{"relay", "--peer", "/a.sock", "--cluster", "x"}, "--cluster cannot be combined with --peer"},
		{[]string{"relay", "--peer", "/a.sock", "--listen", "nonsense"}, "--listen"},
	} {
		_, _, err := runCLIErr(t, ctx, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: error %v, want one mentioning %s", tt.args, err, tt.want)
		}
	}
}

func TestNodeAgentPeers(t *testing.T) {
	dir := t.TempDir()
	agentOf := func(name, node string) cluster.NodeAgent {
		return cluster.NodeAgent{Instance: name + "-" + node, RunRoot: filepath.Join(dir, node, "run"), StateRoot: filepath.Join(dir, node, "state")}
	}
	st := &cluster.State{Name: "demo", CNI: cluster.CNIBulwark, Nodes: []cluster.NodeState{{Name: "node-1"}, {Name: "node-2"}}}
	peers, err := nodeAgentPeers(st, agentOf)
	if err != nil {
		t.Fatal(err)
	}
	want := []relay.Peer{
		{Name: "node-1", Address: "unix://" + filepath.Join(dir, "node-1", "run", "demo-node-1", "hubble.sock")},
		{Name: "node-2", Address: "unix://" + filepath.Join(dir, "node-2", "run", "demo-node-2", "hubble.sock")},
	}
	if !slices.Equal(peers, want) {
		t.Errorf("peers %v, want %v", peers, want)
	}
	st.CNI = cluster.CNIPtp
	if _, err := nodeAgentPeers(st, agentOf); err == nil || !strings.Contains(err.Error(), "--cni bulwark") {
		t.Errorf("a ptp cluster: error %v", err)
	}
	// The real layout is the one 'cluster up' starts its agents with.
	if ag := cluster.NodeAgentOf("demo", "node-1"); ag.Instance != "demo-node-1" ||
		ag.RunRoot != filepath.Join(cluster.Dir("demo"), "nodes", "node-1", "bulwark-run") {
		t.Errorf("NodeAgentOf: %+v", ag)
	}
	if _, err := clusterPeers("no-such-c"); err == nil || errors.Is(err, os.ErrPermission) {
		t.Errorf("a cluster that does not exist: %v", err)
	}
}

func TestNodeStatusNotice(t *testing.T) {
	ev := func(state relaypb.NodeState, msg string, names ...string) *observerpb.GetFlowsResponse {
		return &observerpb.GetFlowsResponse{ResponseTypes: &observerpb.GetFlowsResponse_NodeStatus{
			NodeStatus: &relaypb.NodeStatusEvent{StateChange: state, NodeNames: names, Message: msg}}}
	}
	for _, tt := range []struct {
		resp *observerpb.GetFlowsResponse
		want string
	}{
		{ev(relaypb.NodeState_NODE_UNAVAILABLE, "node-2 (/x.sock): refused", "node-2"), "NODE UNAVAILABLE: node-2 (/x.sock): refused\n"},
		{ev(relaypb.NodeState_NODE_ERROR, "", "node-2", "node-3"), "NODE ERROR: node-2, node-3\n"},
		{ev(relaypb.NodeState_NODE_CONNECTED, "node-2 (/x.sock): connected again", "node-2"), "NODE CONNECTED: node-2 (/x.sock): connected again\n"},
		// Hubble Relay lists the connected nodes at every start: no news.
		{ev(relaypb.NodeState_NODE_CONNECTED, "", "node-1", "node-2"), ""},
	} {
		var b bytes.Buffer
		if !nodeStatusNotice(&b, tt.resp) || b.String() != tt.want {
			t.Errorf("%v: printed %q, want %q", tt.resp, b.String(), tt.want)
		}
	}
	if nodeStatusNotice(&bytes.Buffer{}, &observerpb.GetFlowsResponse{}) {
		t.Error("a response without a node status taken for one")
	}
}
