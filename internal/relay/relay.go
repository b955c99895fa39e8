// Package relay serves the Hubble Observer API over the flows of several
// nodes, as Hubble Relay does: each request fans out to every peer (a node
// agent's Observer API, or another relay) and the answers are merged.
//
//   - GetFlows: flows from every peer ordered by flow time. Without follow
//     the peers' whole answers are gathered first, so the order is exact and
//     --first/--last N mean the N oldest/newest flows of the merge (Hubble
//     Relay returns up to N per node). With follow, flows are forwarded as
//     they come through a short sorting window; the backlog of a follow
//     with a number is the merge's last N as well.
//   - ServerStatus: flow counts summed, connected and unavailable nodes
//     counted, the unavailable ones named.
//   - GetNodes, GetNamespaces: the union of the peers' answers.
//
// A peer that cannot be reached does not fail a request: GetFlows reports
// it with a NodeStatus event (NODE_UNAVAILABLE, or NODE_ERROR with the
// reason) and carries on with the others; ServerStatus and GetNodes count
// and list it. A follow request tries it again and carries on from where
// it left off (NODE_CONNECTED). Only when no peer answers does GetFlows
// fail (Unavailable).
// Filters and time bounds are passed to every peer unchanged; a field mask
// too, with "time" added if it lacks it (the merge orders by it; the client
// does not see it).
package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Defaults of Options.
const (
	// DefaultCallTimeout bounds each peer's answer to a unary call
	// (ServerStatus, GetNodes, GetNamespaces).
	DefaultCallTimeout = 5 * time.Second
	// DefaultSortWindow is how long a followed flow waits for older flows
	// from other peers before it is sent.
	DefaultSortWindow = 500 * time.Millisecond
	// DefaultSortBuffer is how many followed flows may wait at most; beyond
	// it the oldest is sent at once.
	DefaultSortBuffer = 1024
	// DefaultRetryInterval is how often a follow request tries a peer
	// that failed again (Hubble Relay looks for peers every 2 s).
	DefaultRetryInterval = 2 * time.Second
	// connectTimeout bounds a connection attempt to a peer.
	connectTimeout = 5 * time.Second
	// maxRetryDelay bounds the wait between attempts to reach a peer
	// that was down, so a restarted agent is back within seconds
	// (gRPC's default waits up to two minutes).
	maxRetryDelay = 5 * time.Second
	// maxUnavailableListed is how many unavailable nodes ServerStatus
	// names (as Hubble Relay: a long list helps nobody).
	maxUnavailableListed = 10
)

// healthService is the name `hubble status` checks (Cilium's
// ObserverServiceName).
const healthService = "hubble.server.Observer"

// Peer is one node's (or relay's) Observer API.
type Peer struct {
	// Name identifies the peer in statuses when it cannot say its own node
	// name (it is down); "" means its address.
	Name string
	// Address: unix:///path, /path, or host:port.
	Address string
}

func (p Peer) String() string {
	if p.Name == "" {
		return p.Address
	}
	return p.Name
}

// ParsePeer reads NAME=ADDRESS or ADDRESS (see Peer).
func ParsePeer(s string) (Peer, error) {
	if name, addr, ok := strings.Cut(s, "="); ok && name != "" && !strings.ContainsAny(name, "/:") {
		if _, err := Target(addr); err != nil {
			return Peer{}, err
		}
		return Peer{Name: name, Address: addr}, nil
	}
	if _, err := Target(s); err != nil {
		return Peer{}, err
	}
	return Peer{Address: s}, nil
}

// Target returns the gRPC target of an address: unix:///path, /path
// (a unix socket) or host:port.
func Target(addr string) (string, error) {
	switch {
	case addr == "":
		return "", errors.New("empty address: want unix:///path, /path or host:port")
	case strings.HasPrefix(addr, "unix://"):
		if len(addr) == len("unix://") {
			return "", fmt.Errorf("address %q: no socket path", addr)
		}
		return addr, nil
	case strings.HasPrefix(addr, "/"):
		return "unix://" + addr, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("address %q: want unix:///path, /path or host:port: %w", addr, err)
	}
	if host == "" || port == "" {
		return "", fmt.Errorf("address %q: want host:port with both parts", addr)
	}
	return "passthrough:///" + addr, nil
}

// IsLocal reports whether addr is a unix socket or a loopback TCP address:
// the relay speaks plaintext, which is only safe on this machine.
func IsLocal(addr string) bool {
	if strings.HasPrefix(addr, "unix://") || strings.HasPrefix(addr, "/") {
		return true
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// Options configure a Relay.
type Options struct {
	Peers []Peer
	// Version is reported by ServerStatus ("bulwark-relay/VERSION").
	Version string
	// DialOptions are added to the peers' connections (the default is
	// plaintext, see IsLocal).
	DialOptions []grpc.DialOption
	// CallTimeout: 0 means DefaultCallTimeout.
	CallTimeout time.Duration
	// SortWindow: 0 means DefaultSortWindow.
	SortWindow time.Duration
	// SortBuffer: 0 means DefaultSortBuffer.
	SortBuffer int
	// RetryInterval is how often a followed peer that failed is tried
	// again; 0 means DefaultRetryInterval.
	RetryInterval time.Duration
}

var retryBackoff = func() backoff.Config {
	c := backoff.DefaultConfig
	c.MaxDelay = maxRetryDelay
	return c
}()

// Relay implements observerpb.ObserverServer over its peers.
type Relay struct {
	observerpb.UnimplementedObserverServer

	opts  Options
	peers []*peer
}

type peer struct {
	Peer
	conn   *grpc.ClientConn
	client observerpb.ObserverClient
}

// New validates the peers and prepares a connection to each; nothing is
// dialled before the first request, so a peer that is down is reported
// then, not here.
func New(opts Options) (*Relay, error) {
	if len(opts.Peers) == 0 {
		return nil, errors.New("relay: no peers")
	}
	switch {
	case opts.CallTimeout < 0:
		return nil, fmt.Errorf("relay: call timeout %v: must not be negative", opts.CallTimeout)
	case opts.SortWindow < 0:
		return nil, fmt.Errorf("relay: sort window %v: must not be negative", opts.SortWindow)
	case opts.SortBuffer < 0:
		return nil, fmt.Errorf("relay: sort buffer %d: must not be negative", opts.SortBuffer)
	case opts.RetryInterval < 0:
		return nil, fmt.Errorf("relay: retry interval %v: must not be negative", opts.RetryInterval)
	}
	if opts.RetryInterval == 0 {
		opts.RetryInterval = DefaultRetryInterval
	}
	if opts.CallTimeout == 0 {
		opts.CallTimeout = DefaultCallTimeout
	}
	if opts.SortWindow == 0 {
		opts.SortWindow = DefaultSortWindow
	}
	if opts.SortBuffer == 0 {
		opts.SortBuffer = DefaultSortBuffer
	}
	r := &Relay{opts: opts}
	seen := map[string]bool{}
	for _, p := range opts.Peers {
		target, err := Target(p.Address)
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("relay: peer %s: %w", p, err)
		}
		if seen[target] {
			r.Close()
			return nil, fmt.Errorf("relay: peer %s given twice", p)
		}
		seen[target] = true
		dial := append([]grpc.DialOption{
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithConnectParams(grpc.ConnectParams{Backoff: retryBackoff, MinConnectTimeout: connectTimeout}),
		}, opts.DialOptions...)
		conn, err := grpc.NewClient(target, dial...)
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("relay: peer %s: %w", p, err)
		}
		r.peers = append(r.peers, &peer{Peer: p, conn: conn, client: observerpb.NewObserverClient(conn)})
	}
	return r, nil
}

// Close closes the connections to the peers.
func (r *Relay) Close() error {
	var errs []error
	for _, p := range r.peers {
		if err := p.conn.Close(); err != nil {
			errs = append(errs, fmt.Errorf("peer %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// Peers returns the relay's peers.
func (r *Relay) Peers() []Peer {
	out := make([]Peer, len(r.peers))
	for i, p := range r.peers {
		out[i] = p.Peer
	}
	return out
}

// Register adds the Observer service and the health service `hubble
// status` checks to s.
func (r *Relay) Register(s *grpc.Server) {
	observerpb.RegisterObserverServer(s, r)
	hs := health.NewServer()
	hs.SetServingStatus(healthService, healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(observerpb.Observer_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, hs)
}

func (r *Relay) version() string {
	if r.opts.Version == "" {
		return "bulwark-relay"
	}
	return "bulwark-relay/" + r.opts.Version
}

// peerState classifies a peer's failure: cannot be reached (unavailable)
// or answered with an error.
func peerState(err error) relaypb.NodeState {
	if status.Code(err) == codes.Unavailable || errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded {
		return relaypb.NodeState_NODE_UNAVAILABLE
	}
	return relaypb.NodeState_NODE_ERROR
}

// errMessage is an error's text without gRPC's "rpc error: code = ..."
// wrapping.
func errMessage(err error) string {
	if s, ok := status.FromError(err); ok {
		return s.Message()
	}
	return err.Error()
}

// fanOut calls fn for every peer concurrently, each with its own timeout,
// and returns the errors by peer index.
func (r *Relay) fanOut(ctx context.Context, fn func(ctx context.Context, i int, p *peer) error) []error {
	errs := make([]error, len(r.peers))
	var wg sync.WaitGroup
	for i, p := range r.peers {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, r.opts.CallTimeout)
			defer cancel()
			errs[i] = fn(ctx, i, p)
		})
	}
	wg.Wait()
	return errs
}

// ServerStatus implements observerpb.ObserverServer: the peers' statuses
// summed. A peer that is itself a relay contributes its own node counts.
func (r *Relay) ServerStatus(ctx context.Context, req *observerpb.ServerStatusRequest) (*observerpb.ServerStatusResponse, error) {
	resps := make([]*observerpb.ServerStatusResponse, len(r.peers))
	errs := r.fanOut(ctx, func(ctx context.Context, i int, p *peer) error {
		var err error
		resps[i], err = p.client.ServerStatus(ctx, req)
		return err
	})
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	out := &observerpb.ServerStatusResponse{Version: r.version()}
	var connected, unavailable uint32
	for i, st := range resps {
		if errs[i] != nil {
			unavailable++
			out.UnavailableNodes = append(out.UnavailableNodes, r.peers[i].String())
			continue
		}
		out.NumFlows += st.GetNumFlows()
		out.MaxFlows += st.GetMaxFlows()
		out.SeenFlows += st.GetSeenFlows()
		out.FlowsRate += st.GetFlowsRate()
		// The longest uptime: a sum of uptimes means nothing.
		out.UptimeNs = max(out.UptimeNs, st.GetUptimeNs())
		if n := st.GetNumConnectedNodes(); n != nil {
			connected += n.GetValue()
		} else {
			connected++
		}
		unavailable += st.GetNumUnavailableNodes().GetValue()
		out.UnavailableNodes = append(out.UnavailableNodes, st.GetUnavailableNodes()...)
	}
	if len(out.UnavailableNodes) > maxUnavailableListed {
		out.UnavailableNodes = out.UnavailableNodes[:maxUnavailableListed]
	}
	out.NumConnectedNodes = wrapperspb.UInt32(connected)
	out.NumUnavailableNodes = wrapperspb.UInt32(unavailable)
	return out, nil
}

// GetNodes implements observerpb.ObserverServer: every peer's nodes; a
// peer that does not answer is one node, unavailable (or in error).
func (r *Relay) GetNodes(ctx context.Context, req *observerpb.GetNodesRequest) (*observerpb.GetNodesResponse, error) {
	nodes := make([][]*observerpb.Node, len(r.peers))
	errs := r.fanOut(ctx, func(ctx context.Context, i int, p *peer) error {
		resp, err := p.client.GetNodes(ctx, req)
		if err != nil {
			return err
		}
		nodes[i] = resp.GetNodes()
		return nil
	})
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	out := &observerpb.GetNodesResponse{}
	for i, p := range r.peers {
		if errs[i] != nil {
			out.Nodes = append(out.Nodes, &observerpb.Node{Name: p.String(), Address: p.Address, State: peerState(errs[i])})
			continue
		}
		if len(nodes[i]) == 0 {
			out.Nodes = append(out.Nodes, &observerpb.Node{Name: p.String(), Address: p.Address, State: relaypb.NodeState_NODE_CONNECTED})
			continue
		}
		for _, n := range nodes[i] {
			if n.GetAddress() == "" {
				n.Address = p.Address
			}
			out.Nodes = append(out.Nodes, n)
		}
	}
	return out, nil
}

// GetNamespaces implements observerpb.ObserverServer: the union of the
// peers' namespaces, sorted; peers that do not answer are left out.
func (r *Relay) GetNamespaces(ctx context.Context, req *observerpb.GetNamespacesRequest) (*observerpb.GetNamespacesResponse, error) {
	answers := make([][]*observerpb.Namespace, len(r.peers))
	errs := r.fanOut(ctx, func(ctx context.Context, i int, p *peer) error {
		resp, err := p.client.GetNamespaces(ctx, req)
		if err != nil {
			return err
		}
		answers[i] = resp.GetNamespaces()
		return nil
	})
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	if !slices.ContainsFunc(errs, func(err error) bool { return err == nil }) {
		return nil, r.allFailed(errs)
	}
	type key struct{ cluster, namespace string }
	seen := map[key]bool{}
	out := &observerpb.GetNamespacesResponse{}
	for _, nss := range answers {
		for _, ns := range nss {
			k := key{ns.GetCluster(), ns.GetNamespace()}
			if !seen[k] {
				seen[k] = true
				out.Namespaces = append(out.Namespaces, ns)
			}
		}
	}
	slices.SortFunc(out.Namespaces, func(a, b *observerpb.Namespace) int {
		return cmp.Or(cmp.Compare(a.GetCluster(), b.GetCluster()), cmp.Compare(a.GetNamespace(), b.GetNamespace()))
	})
	return out, nil
}

// allFailed is the error of a request no peer answered: Unavailable,
// naming each peer and its error.
func (r *Relay) allFailed(errs []error) error {
	var parts []string
	for i, err := range errs {
		if err != nil {
			parts = append(parts, fmt.Sprintf("%s: %s", r.peers[i], errMessage(err)))
		}
	}
	return status.Errorf(codes.Unavailable, "no peer answered: %s", strings.Join(parts, "; "))
}
