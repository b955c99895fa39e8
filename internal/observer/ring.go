package observer

import (
	"sync"
	"sync/atomic"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// Ring keeps the most recent flows and fans new ones out to followers.
//
// Invariants: Push never blocks on a follower (a full follower loses the
// flow and counts it); a follower registered with Follow sees every flow
// pushed after the backlog it was handed, in order, unless it counts it lost.
type Ring struct {
	mu   sync.Mutex
	buf  []*flowpb.Flow
	seen uint64 // flows ever pushed; buf[seen%len(buf)] is the next slot
	subs map[*Follower]struct{}
	lost atomic.Uint64 // flows any follower lost
}

// NewRing returns a ring holding up to capacity flows (at least 1).
func NewRing(capacity int) *Ring {
	if capacity < 1 {
		capacity = 1
	}
	return &Ring{buf: make([]*flowpb.Flow, capacity), subs: make(map[*Follower]struct{})}
}

// Push stores a flow, evicting the oldest when full, and offers it to every
// follower without waiting.
func (r *Ring) Push(f *flowpb.Flow) {
	r.mu.Lock()
	r.buf[r.seen%uint64(len(r.buf))] = f
	r.seen++
	for s := range r.subs {
		select {
		case s.ch <- f:
		default:
			s.lost.Add(1)
			s.lostTotal.Add(1)
			r.lost.Add(1)
		}
	}
	r.mu.Unlock()
}

// Lost is how many flows followers have lost, all followers together.
func (r *Ring) Lost() uint64 { return r.lost.Load() }

// Capacity is the most flows the ring holds.
func (r *Ring) Capacity() int { return len(r.buf) }

// Stats returns the number of flows held and ever pushed.
func (r *Ring) Stats() (held, seen uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.heldLocked(), r.seen
}

func (r *Ring) heldLocked() uint64 {
	if r.seen < uint64(len(r.buf)) {
		return r.seen
	}
	return uint64(len(r.buf))
}

// Snapshot returns the held flows, oldest first.
func (r *Ring) Snapshot() []*flowpb.Flow {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.snapshotLocked()
}

func (r *Ring) snapshotLocked() []*flowpb.Flow {
	n := r.heldLocked()
	out := make([]*flowpb.Flow, 0, n)
	start := r.seen - n
	for i := start; i < r.seen; i++ {
		out = append(out, r.buf[i%uint64(len(r.buf))])
	}
	return out
}

// Follower receives the flows pushed after it registered.
type Follower struct {
	ring      *Ring
	ch        chan *flowpb.Flow
	lost      atomic.Uint64 // since the last TakeLost
	lostTotal atomic.Uint64
	closeOnce sync.Once
}

// Follow registers a follower with a queue of buffer flows and returns it
// with the flows held at that instant (oldest first): together they are
// gap-free.
func (r *Ring) Follow(buffer int) (*Follower, []*flowpb.Flow) {
	if buffer < 1 {
		buffer = 1
	}
	s := &Follower{ring: r, ch: make(chan *flowpb.Flow, buffer)}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.subs[s] = struct{}{}
	return s, r.snapshotLocked()
}

// C delivers the flows.
func (s *Follower) C() <-chan *flowpb.Flow { return s.ch }

// TakeLost returns how many flows the follower lost since the last call.
func (s *Follower) TakeLost() uint64 { return s.lost.Swap(0) }

// LostTotal is how many flows the follower lost since it registered.
func (s *Follower) LostTotal() uint64 { return s.lostTotal.Load() }

// Close unregisters the follower. Its channel is not closed: readers stop
// on their own context.
func (s *Follower) Close() {
	s.closeOnce.Do(func() {
		s.ring.mu.Lock()
		delete(s.ring.subs, s)
		s.ring.mu.Unlock()
	})
}
