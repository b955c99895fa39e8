package relay

import (
	"cmp"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// GetFlows implements observerpb.ObserverServer over every peer.
func (r *Relay) GetFlows(req *observerpb.GetFlowsRequest, stream observerpb.Observer_GetFlowsServer) error {
	req, strip := withTime(req)
	if strip {
		stream = timeStripper{stream}
	}
	if req.GetFollow() {
		return r.followFlows(req, stream)
	}
	return r.gatherFlows(req, stream)
}

// withTime returns req asking for each flow's time, which the merge orders
// by: a field mask without "time" gets it, and strip says the time must be
// removed again before the client sees the flows.
func withTime(req *observerpb.GetFlowsRequest) (_ *observerpb.GetFlowsRequest, strip bool) {
	paths := req.GetFieldMask().GetPaths()
	if len(paths) == 0 || slices.Contains(paths, "time") {
		return req, false
	}
	out := proto.Clone(req).(*observerpb.GetFlowsRequest)
	out.FieldMask.Paths = append(out.FieldMask.Paths, "time")
	return out, true
}

// timeStripper removes the time the relay added to the field mask.
type timeStripper struct {
	observerpb.Observer_GetFlowsServer
}

func (s timeStripper) Send(resp *observerpb.GetFlowsResponse) error {
	if f := resp.GetFlow(); f != nil {
		f.Time, resp.Time = nil, nil
	}
	return s.Observer_GetFlowsServer.Send(resp)
}

// peerFlows is what one peer answered to a GetFlows request that ends.
type peerFlows struct {
	resps []*observerpb.GetFlowsResponse
	err   error
}

// gatherFlows answers a request without follow: every peer's whole answer,
// merged by time, then the first or last req.Number flows of the merge.
func (r *Relay) gatherFlows(req *observerpb.GetFlowsRequest, stream observerpb.Observer_GetFlowsServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	results := make([]peerFlows, len(r.peers))
	var wg sync.WaitGroup
	for i, p := range r.peers {
		wg.Go(func() {
			results[i].err = recvFlows(ctx, p, req, nil, func(resp *observerpb.GetFlowsResponse) bool {
				results[i].resps = append(results[i].resps, resp)
				return true
			})
		})
	}
	wg.Wait()
	if err := stream.Context().Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	errs := make([]error, len(results))
	for i, res := range results {
		errs[i] = res.err
	}
	if err := r.requestError(errs); err != nil {
		return err
	}
	if !slices.ContainsFunc(results, func(res peerFlows) bool { return res.err == nil || len(res.resps) > 0 }) {
		return r.allFailed(errs)
	}
	for i, err := range errs {
		if err != nil {
			if err := stream.Send(r.nodeStatus(i, err)); err != nil {
				return err
			}
		}
	}
	var merged []*observerpb.GetFlowsResponse
	for _, res := range results {
		merged = append(merged, res.resps...)
	}
	// Stable: equal times keep the peers' order.
	slices.SortStableFunc(merged, func(a, b *observerpb.GetFlowsResponse) int { return compareTime(a, b) })
	for _, resp := range limit(merged, req.GetNumber(), req.GetFirst()) {
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
	return nil
}

// limit keeps the first (or last) n flows of responses sorted by time,
// and the other responses (lost events) among them; n == 0 keeps all.
func limit(resps []*observerpb.GetFlowsResponse, n uint64, first bool) []*observerpb.GetFlowsResponse {
	if n == 0 {
		return resps
	}
	var flows uint64
	if first {
		for i, resp := range resps {
			if resp.GetFlow() != nil {
				if flows == n {
					return resps[:i]
				}
				flows++
			}
		}
		return resps
	}
	for i := len(resps) - 1; i >= 0; i-- {
		if resps[i].GetFlow() != nil {
			if flows == n {
				return resps[i+1:]
			}
			flows++
		}
	}
	return resps
}

func compareTime(a, b *observerpb.GetFlowsResponse) int {
	ta, tb := a.GetTime(), b.GetTime()
	return cmp.Or(cmp.Compare(ta.GetSeconds(), tb.GetSeconds()), cmp.Compare(ta.GetNanos(), tb.GetNanos()))
}

// recvFlows calls GetFlows on p and hands each response to each until the
// stream ends (nil), fails, ctx ends (nil) or each returns false (nil).
// opened, if not nil, is called once the peer accepted the call.
func recvFlows(ctx context.Context, p *peer, req *observerpb.GetFlowsRequest, opened func(), each func(*observerpb.GetFlowsResponse) bool) error {
	s, err := p.client.GetFlows(ctx, req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if opened != nil {
		opened()
	}
	for {
		resp, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if !each(resp) {
			return nil
		}
	}
}

// requestError is the error of a request a peer rejected as invalid: the
// same request goes to every peer, so it is the client's mistake, not the
// peer's.
func (r *Relay) requestError(errs []error) error {
	for i, err := range errs {
		if status.Code(err) == codes.InvalidArgument {
			return status.Errorf(codes.InvalidArgument, "peer %s: %s", r.peers[i], errMessage(err))
		}
	}
	return nil
}

// nodeStatus tells the client that peer i failed: NODE_UNAVAILABLE when
// it cannot be reached, NODE_ERROR otherwise, with the reason.
func (r *Relay) nodeStatus(i int, err error) *observerpb.GetFlowsResponse {
	return nodeStatusEvent(peerState(err), r.peers[i],
		fmt.Sprintf("%s (%s): %s", r.peers[i], r.peers[i].Address, errMessage(err)))
}

func nodeStatusEvent(state relaypb.NodeState, p *peer, msg string) *observerpb.GetFlowsResponse {
	return &observerpb.GetFlowsResponse{
		Time: timestamppb.Now(),
		ResponseTypes: &observerpb.GetFlowsResponse_NodeStatus{NodeStatus: &relaypb.NodeStatusEvent{
			StateChange: state, NodeNames: []string{p.String()}, Message: msg,
		}},
	}
}

// peerEvent is what a followed peer's goroutine reports.
type peerEvent struct {
	peer int
	kind eventKind
	resp *observerpb.GetFlowsResponse // eventResponse
	err  error                        // eventDown, eventDone
}

type eventKind int

const (
	eventResponse  eventKind = iota // a response
	eventConnected                  // the peer accepted the call
	eventDown                       // the call failed; it is tried again
	eventDone                       // the peer's stream ended: until reached, or err (the request is invalid)
)

// followFlows answers a request with follow: every peer's flows as they
// come, through a sorting window (see sortBuffer), until every peer's
// stream ends (until) or the client leaves. A peer that fails is reported
// (NODE_UNAVAILABLE or NODE_ERROR), tried again every RetryInterval, and
// reported NODE_CONNECTED when it answers again, from where it left off.
// When no peer can be reached at all, the request fails.
func (r *Relay) followFlows(req *observerpb.GetFlowsRequest, stream observerpb.Observer_GetFlowsServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	events := make(chan peerEvent, 64)
	start := time.Now()
	for i := range r.peers {
		wg.Go(func() { r.followPeer(ctx, i, req, start, events) })
	}
	// With a number, each peer's backlog is its own last N: the flows
	// older than the merge's last N are dropped once a snapshot of every
	// peer says which those are. Until then nothing is sent.
	var cutoffC chan *timestamppb.Timestamp
	if req.GetNumber() > 0 {
		cutoffC = make(chan *timestamppb.Timestamp, 1)
		wg.Go(func() { cutoffC <- r.backlogCutoff(ctx, req) })
	}
	var cut *timestamppb.Timestamp
	older := func(resp *observerpb.GetFlowsResponse) bool {
		return cut != nil && resp.GetFlow() != nil && compareTime(resp, &observerpb.GetFlowsResponse{Time: cut}) < 0
	}

	buf := newSortBuffer(r.opts.SortWindow, r.opts.SortBuffer)
	tick := time.NewTicker(max(r.opts.SortWindow/4, time.Millisecond))
	defer tick.Stop()
	send := func(resps []*observerpb.GetFlowsResponse) error {
		for _, resp := range resps {
			if older(resp) {
				continue
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
		return nil
	}
	live := len(r.peers)
	heard := make([]bool, len(r.peers)) // accepted a call at least once
	errs := make([]error, len(r.peers))
	for live > 0 {
		select {
		case <-ctx.Done():
			return nil
		case cut = <-cutoffC:
			cutoffC = nil
		case now := <-tick.C:
			if cutoffC != nil {
				continue // hold the backlog
			}
			if err := send(buf.due(now)); err != nil {
				return err
			}
		case ev := <-events:
			switch ev.kind {
			case eventResponse:
				if err := send(buf.push(ev.resp, time.Now(), cutoffC != nil)); err != nil {
					return err
				}
			case eventConnected:
				recovered := errs[ev.peer] != nil
				heard[ev.peer], errs[ev.peer] = true, nil
				if recovered {
					p := r.peers[ev.peer]
					if err := stream.Send(nodeStatusEvent(relaypb.NodeState_NODE_CONNECTED, p, fmt.Sprintf("%s (%s): connected again", p, p.Address))); err != nil {
						return err
					}
				}
			case eventDown:
				changed := errs[ev.peer] == nil // reported once, not at every retry
				errs[ev.peer] = ev.err
				if !slices.Contains(heard, true) && !slices.Contains(errs, nil) {
					return r.allFailed(errs)
				}
				if !changed {
					continue
				}
				if err := stream.Send(r.nodeStatus(ev.peer, ev.err)); err != nil {
					return err
				}
			case eventDone:
				live--
				if ev.err != nil {
					errs[ev.peer] = ev.err
					if err := r.requestError(errs); err != nil {
						return err
					}
					if err := stream.Send(r.nodeStatus(ev.peer, ev.err)); err != nil {
						return err
					}
				}
			}
		}
	}
	if cutoffC != nil {
		select {
		case cut = <-cutoffC:
		case <-ctx.Done():
			return nil
		}
	}
	return send(buf.drain())
}

// backlogCutoff asks every peer for req's flows without follow and
// returns the time of the oldest of the merge's last req.Number, or nil
// when there are not that many (or no peer answers).
func (r *Relay) backlogCutoff(ctx context.Context, req *observerpb.GetFlowsRequest) *timestamppb.Timestamp {
	snap := proto.Clone(req).(*observerpb.GetFlowsRequest)
	snap.Follow = false
	times := make([][]*observerpb.GetFlowsResponse, len(r.peers))
	var wg sync.WaitGroup
	for i, p := range r.peers {
		wg.Go(func() {
			_ = recvFlows(ctx, p, snap, nil, func(resp *observerpb.GetFlowsResponse) bool {
				if resp.GetFlow() != nil {
					times[i] = append(times[i], &observerpb.GetFlowsResponse{Time: resp.GetTime()})
				}
				return true
			})
		})
	}
	wg.Wait()
	all := slices.Concat(times...)
	if uint64(len(all)) < req.GetNumber() {
		return nil
	}
	slices.SortFunc(all, compareTime)
	return all[uint64(len(all))-req.GetNumber()].GetTime()
}

// followPeer follows peer i's flows into events until ctx ends or the
// peer's stream ends; a failed call is reported and made again, for the
// flows since the last one received (or since start).
func (r *Relay) followPeer(ctx context.Context, i int, req *observerpb.GetFlowsRequest, start time.Time, events chan<- peerEvent) {
	p := r.peers[i]
	report := func(ev peerEvent) bool {
		ev.peer = i
		select {
		case events <- ev:
			return true
		case <-ctx.Done():
			return false
		}
	}
	var last *timestamppb.Timestamp // of the last flow received
	for {
		err := recvFlows(ctx, p, req, func() { report(peerEvent{kind: eventConnected}) }, func(resp *observerpb.GetFlowsResponse) bool {
			if resp.GetFlow() != nil {
				last = resp.GetTime()
			}
			return report(peerEvent{kind: eventResponse, resp: resp})
		})
		switch {
		case ctx.Err() != nil:
			return
		case err == nil, status.Code(err) == codes.InvalidArgument:
			report(peerEvent{kind: eventDone, err: err})
			return
		}
		if !report(peerEvent{kind: eventDown, err: err}) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(r.opts.RetryInterval):
		}
		req = resumeRequest(req, last, start)
	}
}

// resumeRequest is req for a peer that failed: the flows after the last
// one received from it (or, if none was, since the request started),
// without a count.
func resumeRequest(req *observerpb.GetFlowsRequest, last *timestamppb.Timestamp, start time.Time) *observerpb.GetFlowsRequest {
	from := start
	if last != nil {
		from = last.AsTime().Add(time.Nanosecond)
	}
	if s := req.GetSince(); s != nil && s.AsTime().After(from) {
		from = s.AsTime()
	}
	out := proto.Clone(req).(*observerpb.GetFlowsRequest)
	out.Number, out.Since = 0, timestamppb.New(from)
	return out
}

// sortBuffer orders followed flows from several peers by time: a flow
// waits at most window after it arrived for older flows from slower
// peers, and at most max flows wait.
type sortBuffer struct {
	window time.Duration
	max    int
	h      respHeap
	seq    uint64
}

type pending struct {
	resp    *observerpb.GetFlowsResponse
	arrived time.Time
	seq     uint64 // arrival order: ties keep it
}

type respHeap []pending

func (h respHeap) Len() int { return len(h) }
func (h respHeap) Less(i, j int) bool {
	if c := compareTime(h[i].resp, h[j].resp); c != 0 {
		return c < 0
	}
	return h[i].seq < h[j].seq
}
func (h respHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *respHeap) Push(x any)   { *h = append(*h, x.(pending)) }
func (h *respHeap) Pop() any {
	old := *h
	p := old[len(old)-1]
	old[len(old)-1] = pending{}
	*h = old[:len(old)-1]
	return p
}

func newSortBuffer(window time.Duration, maxLen int) *sortBuffer {
	return &sortBuffer{window: window, max: maxLen}
}

// push adds a response and returns those that must go now (the buffer
// is full, unless hold).
func (b *sortBuffer) push(resp *observerpb.GetFlowsResponse, now time.Time, hold bool) []*observerpb.GetFlowsResponse {
	b.seq++
	heap.Push(&b.h, pending{resp: resp, arrived: now, seq: b.seq})
	var out []*observerpb.GetFlowsResponse
	for !hold && b.h.Len() > b.max {
		out = append(out, heap.Pop(&b.h).(pending).resp)
	}
	return out
}

// due returns, oldest first, the responses that waited the window and
// every response older than one of them.
func (b *sortBuffer) due(now time.Time) []*observerpb.GetFlowsResponse {
	var cut *observerpb.GetFlowsResponse
	for _, p := range b.h {
		if now.Sub(p.arrived) >= b.window && (cut == nil || compareTime(p.resp, cut) > 0) {
			cut = p.resp
		}
	}
	if cut == nil {
		return nil
	}
	var out []*observerpb.GetFlowsResponse
	for b.h.Len() > 0 && compareTime(b.h[0].resp, cut) <= 0 {
		out = append(out, heap.Pop(&b.h).(pending).resp)
	}
	return out
}

// drain returns every waiting response, oldest first.
func (b *sortBuffer) drain() []*observerpb.GetFlowsResponse {
	var out []*observerpb.GetFlowsResponse
	for b.h.Len() > 0 {
		out = append(out, heap.Pop(&b.h).(pending).resp)
	}
	return out
}
