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
	"google.golang.org/protobuf/types/known/timestamppb"
)

// GetFlows implements observerpb.ObserverServer over every peer.
func (r *Relay) GetFlows(req *observerpb.GetFlowsRequest, stream observerpb.Observer_GetFlowsServer) error {
	if req.GetFollow() {
		return r.followFlows(req, stream)
	}
	return r.gatherFlows(req, stream)
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
			results[i].err = recvFlows(ctx, p, req, func(resp *observerpb.GetFlowsResponse) bool {
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
func recvFlows(ctx context.Context, p *peer, req *observerpb.GetFlowsRequest, each func(*observerpb.GetFlowsResponse) bool) error {
	s, err := p.client.GetFlows(ctx, req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
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
	now := timestamppb.Now()
	return &observerpb.GetFlowsResponse{
		Time: now,
		ResponseTypes: &observerpb.GetFlowsResponse_NodeStatus{NodeStatus: &relaypb.NodeStatusEvent{
			StateChange: peerState(err),
			NodeNames:   []string{r.peers[i].String()},
			Message:     fmt.Sprintf("%s (%s): %s", r.peers[i], r.peers[i].Address, errMessage(err)),
		}},
	}
}

// peerEvent is a response from peer, or (done) the end of its stream.
type peerEvent struct {
	peer int
	resp *observerpb.GetFlowsResponse
	done bool
	err  error
}

// followFlows answers a request with follow: every peer's flows as they
// come, through a sorting window (see sortBuffer), until every peer's
// stream ends (until) or the client leaves.
func (r *Relay) followFlows(req *observerpb.GetFlowsRequest, stream observerpb.Observer_GetFlowsServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	events := make(chan peerEvent, 64)
	for i, p := range r.peers {
		wg.Go(func() {
			err := recvFlows(ctx, p, req, func(resp *observerpb.GetFlowsResponse) bool {
				select {
				case events <- peerEvent{peer: i, resp: resp}:
					return true
				case <-ctx.Done():
					return false
				}
			})
			select {
			case events <- peerEvent{peer: i, done: true, err: err}:
			case <-ctx.Done():
			}
		})
	}

	buf := newSortBuffer(r.opts.SortWindow, r.opts.SortBuffer)
	tick := time.NewTicker(max(r.opts.SortWindow/4, time.Millisecond))
	defer tick.Stop()
	send := func(resps []*observerpb.GetFlowsResponse) error {
		for _, resp := range resps {
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
		return nil
	}
	live := len(r.peers)
	heard := make([]bool, len(r.peers)) // sent something or ended cleanly
	errs := make([]error, len(r.peers))
	for live > 0 {
		select {
		case <-ctx.Done():
			return nil
		case now := <-tick.C:
			if err := send(buf.due(now)); err != nil {
				return err
			}
		case ev := <-events:
			if !ev.done {
				heard[ev.peer] = true
				if err := send(buf.push(ev.resp, time.Now())); err != nil {
					return err
				}
				continue
			}
			live--
			if ev.err == nil {
				heard[ev.peer] = true
				continue
			}
			errs[ev.peer] = ev.err
			if err := r.requestError(errs); err != nil {
				return err
			}
			if live == 0 && !slices.Contains(heard, true) {
				return r.allFailed(errs)
			}
			if err := stream.Send(r.nodeStatus(ev.peer, ev.err)); err != nil {
				return err
			}
		}
	}
	return send(buf.drain())
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
// is full).
func (b *sortBuffer) push(resp *observerpb.GetFlowsResponse, now time.Time) []*observerpb.GetFlowsResponse {
	b.seq++
	heap.Push(&b.h, pending{resp: resp, arrived: now, seq: b.seq})
	var out []*observerpb.GetFlowsResponse
	for b.h.Len() > b.max {
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
