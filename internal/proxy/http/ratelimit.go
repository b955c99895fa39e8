package httpproxy

import (
	"fmt"
	"sync"
	"time"

	"github.com/bulwark-net/bulwark/internal/proxy"
)

// TokenBucketConfig is Envoy's token_bucket: the bucket starts full at
// MaxTokens and gains TokensPerFill every FillInterval, never beyond
// MaxTokens; each request takes one token or is answered 429.
type TokenBucketConfig struct {
	MaxTokens     uint32
	TokensPerFill uint32 // Envoy's default is 1
	FillInterval  time.Duration
}

// Validate checks the configuration as Envoy does (max_tokens > 0,
// fill_interval >= 50ms).
func (c TokenBucketConfig) Validate() error {
	if c.MaxTokens == 0 {
		return fmt.Errorf("max_tokens: must be greater than 0")
	}
	if c.TokensPerFill == 0 {
		return fmt.Errorf("tokens_per_fill: must be greater than 0")
	}
	if c.FillInterval < 50*time.Millisecond {
		return fmt.Errorf("fill_interval: %v is below Envoy's minimum of 50ms", c.FillInterval)
	}
	return nil
}

// TokenBucket is one shared bucket (Envoy's local_ratelimit keeps one per
// listener: every connection to the limited service draws from it). It is
// safe for concurrent use.
type TokenBucket struct {
	cfg TokenBucketConfig
	now func() time.Time

	mu       sync.Mutex
	tokens   uint64
	lastFill time.Time // the instant of the last whole fill
}

// NewTokenBucket returns a full bucket. now may be nil (time.Now).
func NewTokenBucket(cfg TokenBucketConfig, now func() time.Time) (*TokenBucket, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("token bucket: %w", err)
	}
	if now == nil {
		now = time.Now
	}
	return &TokenBucket{cfg: cfg, now: now, tokens: uint64(cfg.MaxTokens), lastFill: now()}, nil
}

// Config is the bucket's configuration.
func (b *TokenBucket) Config() TokenBucketConfig { return b.cfg }

// Allow takes a token if there is one. Fills happen at whole multiples of
// FillInterval since the bucket was made, as Envoy's fill timer does.
func (b *TokenBucket) Allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if now := b.now(); now.Sub(b.lastFill) >= b.cfg.FillInterval {
		fills := uint64(now.Sub(b.lastFill) / b.cfg.FillInterval)
		b.lastFill = b.lastFill.Add(time.Duration(fills) * b.cfg.FillInterval)
		b.tokens = min(uint64(b.cfg.MaxTokens), b.tokens+fills*uint64(b.cfg.TokensPerFill))
	}
	if b.tokens == 0 {
		return false
	}
	b.tokens--
	return true
}

// RateLimitSource finds the bucket that limits a flow's requests (the
// flow's destination is a backend of a service a CiliumEnvoyConfig
// limits), or nil when none does.
type RateLimitSource interface {
	RateLimitFor(f proxy.Flow) *TokenBucket
}
