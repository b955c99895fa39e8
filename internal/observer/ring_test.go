package observer

import (
	"sync"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

func flowAt(sec int) *flowpb.Flow {
	return &flowpb.Flow{NodeName: "n", Summary: time.Duration(sec).String()}
}

func TestRingKeepsTheNewestFlows(t *testing.T) {
	r := NewRing(4)
	for i := 0; i < 10; i++ {
		r.Push(flowAt(i))
	}
	got := r.Snapshot()
	if len(got) != 4 {
		t.Fatalf("held %d flows, want capacity 4", len(got))
	}
	for i, f := range got {
		if want := flowAt(6 + i).Summary; f.Summary != want {
			t.Errorf("flow %d is %q, want %q (oldest first)", i, f.Summary, want)
		}
	}
	held, seen := r.Stats()
	if held != 4 || seen != 10 {
		t.Errorf("stats held=%d seen=%d, want 4 and 10", held, seen)
	}
	partial := NewRing(8)
	partial.Push(flowAt(1))
	if held, seen := partial.Stats(); held != 1 || seen != 1 || len(partial.Snapshot()) != 1 {
		t.Errorf("partly filled ring: held=%d seen=%d", held, seen)
	}
}

func TestFollowerNeverBlocksTheProducerAndCountsLosses(t *testing.T) {
	r := NewRing(16)
	r.Push(flowAt(0))
	slow, backlog := r.Follow(2)
	defer slow.Close()
	fast, _ := r.Follow(1000)
	defer fast.Close()
	if len(backlog) != 1 {
		t.Errorf("backlog %d flows, want the 1 held", len(backlog))
	}
	// Nobody reads: Push must return anyway.
	for i := 1; i <= 100; i++ {
		r.Push(flowAt(i))
	}
	if lost := slow.TakeLost(); lost != 98 {
		t.Errorf("slow follower lost %d, want 98 (100 pushed, queue of 2)", lost)
	}
	if slow.TakeLost() != 0 || slow.LostTotal() != 98 {
		t.Errorf("TakeLost must reset; total %d", slow.LostTotal())
	}
	if fast.LostTotal() != 0 || len(fast.C()) != 100 {
		t.Errorf("fast follower lost %d, queued %d", fast.LostTotal(), len(fast.C()))
	}
	if r.Lost() != 98 {
		t.Errorf("ring lost %d, want 98", r.Lost())
	}
	// The queued flows are the first ones, in order.
	if f := <-slow.C(); f.Summary != flowAt(1).Summary {
		t.Errorf("first queued %q", f.Summary)
	}
	slow.Close()
	r.Push(flowAt(101))
	if slow.LostTotal() != 98 {
		t.Error("a closed follower must not be offered flows")
	}
}

func TestRingConcurrentPushAndFollow(t *testing.T) {
	r := NewRing(64)
	var wg sync.WaitGroup
	for p := 0; p < 4; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				r.Push(flowAt(i))
			}
		}()
	}
	for s := 0; s < 4; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				f, backlog := r.Follow(8)
				if len(backlog) > 64 {
					t.Errorf("backlog %d > capacity", len(backlog))
				}
				f.Close()
				_ = r.Snapshot()
			}
		}()
	}
	wg.Wait()
	if _, seen := r.Stats(); seen != 4000 {
		t.Errorf("seen %d, want 4000", seen)
	}
}
