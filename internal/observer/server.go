package observer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	peerpb "github.com/cilium/cilium/api/v1/peer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// DefaultTCPAddress is the Hubble API's TCP address, as Cilium's. (The unix
// socket lives in each agent instance's run directory.)
const DefaultTCPAddress = "127.0.0.1:4245"

// hubbleHealthService is the health-check service name `hubble status` asks
// about (Cilium's pkg/hubble/api/v1.ObserverServiceName).
const hubbleHealthService = "hubble.server.Observer"

// DefaultFollowBuffer is how many flows a follow stream may lag behind
// before it loses flows (and is told so with a LostEvent).
const DefaultFollowBuffer = 1024

// ServerOptions configure the Hubble API server.
type ServerOptions struct {
	Observer *Observer
	// Version is reported by ServerStatus and GetNodes.
	Version string
	// UnixSocket to listen on ("" for none); created mode 0600.
	UnixSocket string
	// TCPAddress to listen on ("" for none), e.g. DefaultTCPAddress.
	TCPAddress string
	// Listeners are already bound listeners to serve besides (or instead
	// of) UnixSocket and TCPAddress; the server closes them on Stop.
	Listeners []net.Listener
	// FollowBuffer is each follow stream's queue; 0 means
	// DefaultFollowBuffer.
	FollowBuffer int
}

// Server serves Hubble's Observer and Peer gRPC services over the flows of
// one Observer.
type Server struct {
	observerpb.UnimplementedObserverServer
	peerpb.UnimplementedPeerServer

	opts ServerOptions
	grpc *grpc.Server

	mu        sync.Mutex
	listeners []net.Listener
	done      chan struct{}
	wg        sync.WaitGroup
}

// NewServer returns a server; Start binds it.
func NewServer(opts ServerOptions) (*Server, error) {
	if opts.Observer == nil {
		return nil, errors.New("hubble server: no observer")
	}
	if opts.UnixSocket == "" && opts.TCPAddress == "" && len(opts.Listeners) == 0 {
		return nil, errors.New("hubble server: neither a unix socket nor a TCP address to listen on")
	}
	if opts.FollowBuffer < 0 {
		return nil, fmt.Errorf("hubble server: follow buffer %d: must not be negative", opts.FollowBuffer)
	}
	if opts.FollowBuffer == 0 {
		opts.FollowBuffer = DefaultFollowBuffer
	}
	s := &Server{opts: opts, grpc: grpc.NewServer(), done: make(chan struct{})}
	observerpb.RegisterObserverServer(s.grpc, s)
	peerpb.RegisterPeerServer(s.grpc, s)
	// `hubble status` checks the standard gRPC health service first.
	hs := health.NewServer()
	hs.SetServingStatus(hubbleHealthService, healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(observerpb.Observer_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(peerpb.Peer_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s.grpc, hs)
	return s, nil
}

// Start binds the listeners and serves in the background.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opts.UnixSocket != "" {
		l, err := listenUnix(s.opts.UnixSocket)
		if err != nil {
			s.closeListenersLocked()
			return fmt.Errorf("hubble server: %w", err)
		}
		s.listeners = append(s.listeners, l)
	}
	if s.opts.TCPAddress != "" {
		l, err := net.Listen("tcp", s.opts.TCPAddress)
		if err != nil {
			s.closeListenersLocked()
			return fmt.Errorf("hubble server: listen on %s: %w", s.opts.TCPAddress, err)
		}
		s.listeners = append(s.listeners, l)
	}
	s.listeners = append(s.listeners, s.opts.Listeners...)
	for _, l := range s.listeners {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			_ = s.grpc.Serve(l) // returns when stopped
		}()
	}
	return nil
}

func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("listen on %s: exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return l, nil
}

func (s *Server) closeListenersLocked() {
	for _, l := range s.listeners {
		l.Close()
	}
	s.listeners = nil
}

// Addrs returns the bound addresses (after Start).
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]net.Addr, len(s.listeners))
	for i, l := range s.listeners {
		out[i] = l.Addr()
	}
	return out
}

// TCPAddr returns the bound TCP address, or nil.
func (s *Server) TCPAddr() net.Addr {
	for _, a := range s.Addrs() {
		if a.Network() == "tcp" {
			return a
		}
	}
	return nil
}

// Stop ends every stream and closes the listeners (and the unix socket).
func (s *Server) Stop() {
	s.mu.Lock()
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	s.mu.Unlock()
	s.grpc.Stop()
	s.wg.Wait()
}

// Serve starts the server and stops it when ctx ends.
func (s *Server) Serve(ctx context.Context) error {
	if err := s.Start(); err != nil {
		return err
	}
	<-ctx.Done()
	s.Stop()
	return nil
}

// GetFlows implements observer.Observer.
func (s *Server) GetFlows(req *observerpb.GetFlowsRequest, stream observerpb.Observer_GetFlowsServer) error {
	q, err := newFlowQuery(req)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	ring := s.opts.Observer.Ring()
	var fol *Follower
	var backlog []*flowpb.Flow
	if req.GetFollow() {
		fol, backlog = ring.Follow(s.opts.FollowBuffer)
		defer fol.Close()
	} else {
		backlog = ring.Snapshot()
	}
	for _, f := range q.selectBacklog(backlog) {
		if err := stream.Send(s.flowResponse(q.mask.apply(f))); err != nil {
			return err
		}
	}
	if fol == nil {
		return nil
	}
	ctx := stream.Context()
	var untilC <-chan time.Time
	if q.until != nil {
		t := time.NewTimer(time.Until(*q.until))
		defer t.Stop()
		untilC = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.done:
			return status.Error(codes.Unavailable, "server stopping")
		case <-untilC:
			return nil
		case f := <-fol.C():
			if n := fol.TakeLost(); n > 0 {
				if err := stream.Send(s.lostResponse(n)); err != nil {
					return err
				}
			}
			if q.until != nil && f.GetTime().AsTime().After(*q.until) {
				return nil
			}
			if !q.matches(f) {
				continue
			}
			if err := stream.Send(s.flowResponse(q.mask.apply(f))); err != nil {
				return err
			}
		}
	}
}

func (s *Server) flowResponse(f *flowpb.Flow) *observerpb.GetFlowsResponse {
	return &observerpb.GetFlowsResponse{
		ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: f},
		NodeName:      f.GetNodeName(),
		Time:          f.GetTime(),
	}
}

func (s *Server) lostResponse(n uint64) *observerpb.GetFlowsResponse {
	now := timestamppb.Now()
	return &observerpb.GetFlowsResponse{
		ResponseTypes: &observerpb.GetFlowsResponse_LostEvents{LostEvents: &flowpb.LostEvent{
			Source: flowpb.LostEventSource_OBSERVER_EVENTS_QUEUE, NumEventsLost: n, Last: now,
		}},
		NodeName: s.opts.Observer.NodeName(),
		Time:     now,
	}
}

// flowQuery is a validated GetFlowsRequest.
type flowQuery struct {
	filter       *Filter
	mask         *fieldMask
	since, until *time.Time
	number       uint64
	first        bool
	follow       bool
}

func newFlowQuery(req *observerpb.GetFlowsRequest) (*flowQuery, error) {
	if req.GetFirst() && req.GetFollow() {
		return nil, errors.New("first and follow cannot be combined")
	}
	filter, err := NewFilter(req.GetWhitelist(), req.GetBlacklist())
	if err != nil {
		return nil, err
	}
	mask, err := newFieldMask(req.GetFieldMask())
	if err != nil {
		return nil, err
	}
	q := &flowQuery{filter: filter, mask: mask, number: req.GetNumber(), first: req.GetFirst(), follow: req.GetFollow()}
	if ts := req.GetSince(); ts != nil {
		if err := ts.CheckValid(); err != nil {
			return nil, fmt.Errorf("since: %w", err)
		}
		t := ts.AsTime()
		q.since = &t
	}
	if ts := req.GetUntil(); ts != nil {
		if err := ts.CheckValid(); err != nil {
			return nil, fmt.Errorf("until: %w", err)
		}
		t := ts.AsTime()
		q.until = &t
	}
	if q.since != nil && q.until != nil && q.until.Before(*q.since) {
		return nil, errors.New("until is before since")
	}
	return q, nil
}

func (q *flowQuery) matches(f *flowpb.Flow) bool {
	if q.since != nil || q.until != nil {
		t := f.GetTime().AsTime()
		if q.since != nil && t.Before(*q.since) {
			return false
		}
		if q.until != nil && t.After(*q.until) {
			return false
		}
	}
	return q.filter.Match(f)
}

// selectBacklog picks the stored flows a request asks for, oldest first:
// the first or last `number` matching flows; with follow and neither a
// number nor since, none (only new flows); otherwise all matching.
func (q *flowQuery) selectBacklog(backlog []*flowpb.Flow) []*flowpb.Flow {
	if q.follow && q.number == 0 && q.since == nil {
		return nil
	}
	var out []*flowpb.Flow
	if q.first {
		for _, f := range backlog {
			if q.number > 0 && uint64(len(out)) >= q.number {
				break
			}
			if q.matches(f) {
				out = append(out, f)
			}
		}
		return out
	}
	for i := len(backlog) - 1; i >= 0; i-- {
		if q.number > 0 && uint64(len(out)) >= q.number {
			break
		}
		if q.matches(backlog[i]) {
			out = append(out, backlog[i])
		}
	}
	slices.Reverse(out)
	return out
}

// ServerStatus implements observer.Observer.
func (s *Server) ServerStatus(context.Context, *observerpb.ServerStatusRequest) (*observerpb.ServerStatusResponse, error) {
	o := s.opts.Observer
	held, seen := o.Ring().Stats()
	return &observerpb.ServerStatusResponse{
		NumFlows:            held,
		MaxFlows:            uint64(o.Ring().Capacity()),
		SeenFlows:           seen,
		UptimeNs:            uint64(o.Uptime().Nanoseconds()),
		NumConnectedNodes:   wrapperspb.UInt32(1),
		NumUnavailableNodes: wrapperspb.UInt32(0),
		Version:             s.version(),
		FlowsRate:           flowsRate(o.Ring().Snapshot(), time.Minute),
	}, nil
}

// flowsRate is flows per second over the last window, from the ring.
func flowsRate(flows []*flowpb.Flow, window time.Duration) float64 {
	since := time.Now().Add(-window)
	n := 0
	for i := len(flows) - 1; i >= 0; i-- {
		if flows[i].GetTime().AsTime().Before(since) {
			break
		}
		n++
	}
	return float64(n) / window.Seconds()
}

func (s *Server) version() string {
	if s.opts.Version == "" {
		return "bulwark"
	}
	return "bulwark/" + s.opts.Version
}

// GetNodes implements observer.Observer: Bulwark's server is one node.
func (s *Server) GetNodes(context.Context, *observerpb.GetNodesRequest) (*observerpb.GetNodesResponse, error) {
	o := s.opts.Observer
	held, seen := o.Ring().Stats()
	addr := ""
	if a := s.TCPAddr(); a != nil {
		addr = a.String()
	}
	return &observerpb.GetNodesResponse{Nodes: []*observerpb.Node{{
		Name:      o.NodeName(),
		Version:   s.version(),
		Address:   addr,
		State:     relaypb.NodeState_NODE_CONNECTED,
		UptimeNs:  uint64(o.Uptime().Nanoseconds()),
		NumFlows:  held,
		MaxFlows:  uint64(o.Ring().Capacity()),
		SeenFlows: seen,
	}}}, nil
}

// GetNamespaces implements observer.Observer: the namespaces seen in flows.
func (s *Server) GetNamespaces(context.Context, *observerpb.GetNamespacesRequest) (*observerpb.GetNamespacesResponse, error) {
	names := s.opts.Observer.Namespaces()
	slices.Sort(names)
	resp := &observerpb.GetNamespacesResponse{}
	for _, n := range names {
		resp.Namespaces = append(resp.Namespaces, &observerpb.Namespace{Namespace: n})
	}
	return resp, nil
}

// Notify implements peer.Peer: this node is the only peer.
func (s *Server) Notify(_ *peerpb.NotifyRequest, stream peerpb.Peer_NotifyServer) error {
	addr := ""
	if a := s.TCPAddr(); a != nil {
		addr = a.String()
	}
	if err := stream.Send(&peerpb.ChangeNotification{
		Name: s.opts.Observer.NodeName(), Address: addr, Type: peerpb.ChangeNotificationType_PEER_ADDED,
	}); err != nil {
		return err
	}
	select {
	case <-stream.Context().Done():
	case <-s.done:
	}
	return nil
}
