package httpproxy

import (
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestTokenBucketAsEnvoy(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	b, err := NewTokenBucket(TokenBucketConfig{MaxTokens: 3, TokensPerFill: 2, FillInterval: time.Second}, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	take := func(n int) (ok int) {
		for range n {
			if b.Allow() {
				ok++
			}
		}
		return ok
	}
	if got := take(5); got != 3 {
		t.Fatalf("starts full at max_tokens: %d allowed, want 3", got)
	}
	clk.t = clk.t.Add(999 * time.Millisecond)
	if got := take(1); got != 0 {
		t.Fatalf("before the first fill: %d allowed, want 0", got)
	}
	clk.t = clk.t.Add(time.Millisecond)
	if got := take(5); got != 2 {
		t.Fatalf("one fill adds tokens_per_fill: %d allowed, want 2", got)
	}
	clk.t = clk.t.Add(10 * time.Second)
	if got := take(5); got != 3 {
		t.Fatalf("fills never exceed max_tokens: %d allowed, want 3", got)
	}
	// Fills are on the interval grid: 1.5 s later only one fill happened.
	clk.t = clk.t.Add(1500 * time.Millisecond)
	if got := take(5); got != 2 {
		t.Fatalf("after 1.5 intervals: %d allowed, want 2", got)
	}
	clk.t = clk.t.Add(500 * time.Millisecond)
	if got := take(5); got != 2 {
		t.Fatalf("the second fill lands on the grid: %d allowed, want 2", got)
	}
	for _, bad := range []TokenBucketConfig{{MaxTokens: 0, TokensPerFill: 1, FillInterval: time.Second}, {MaxTokens: 1, TokensPerFill: 1, FillInterval: time.Millisecond}, {MaxTokens: 1, FillInterval: time.Second}} {
		if _, err := NewTokenBucket(bad, nil); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}
