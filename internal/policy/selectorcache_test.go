package policy

import (
	"fmt"
	"testing"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/policy/selector"
)

func testPeer(t *testing.T, text string) peerSpec {
	t.Helper()
	s, err := selector.Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	return labelPeer(s)
}

func baseID(key string) resolved.SelectorID {
	h := keyHash(key)
	return resolved.SelectorID(uint32(h) ^ uint32(h>>32))
}

// collidingPeers finds two selectors whose keys hash to the same base ID
// (a birthday search over ~2^16 keys).
func collidingPeers(t *testing.T) (peerSpec, peerSpec) {
	t.Helper()
	seen := map[resolved.SelectorID]string{}
	for i := 0; i < 1<<20; i++ {
		text := fmt.Sprintf("k8s:app=app-%d", i)
		id := baseID(testPeer(t, text).key)
		if other, ok := seen[id]; ok && id != 0 {
			return testPeer(t, other), testPeer(t, text)
		}
		seen[id] = text
	}
	t.Fatal("no collision found")
	return peerSpec{}, peerSpec{}
}

// Selector IDs come from the selectors, not from history: the same
// selectors get the same IDs whatever the order they arrive in and
// whatever came and went before.
func TestSelectorIDsIndependentOfHistory(t *testing.T) {
	ids := map[identity.NumericIdentity]identity.Labels{}
	texts := []string{"k8s:app=web", "k8s:app=db", "k8s:io.kubernetes.pod.namespace=demo", "", "k8s:app in (a,b)"}
	a, b := newSelectorCache(nil), newSelectorCache(nil)
	got := map[string]resolved.SelectorID{}
	for _, text := range texts {
		p := testPeer(t, text)
		got[p.key] = a.acquire(p, ids, newFQDNState())
	}
	// b: other selectors first (then released), reverse order.
	for i := 0; i < 50; i++ {
		id := b.acquire(testPeer(t, fmt.Sprintf("k8s:tmp=%d", i)), ids, newFQDNState())
		b.release(id)
	}
	for i := len(texts) - 1; i >= 0; i-- {
		p := testPeer(t, texts[i])
		if id := b.acquire(p, ids, newFQDNState()); id != got[p.key] || id == 0 {
			t.Errorf("selector %q: ID %d, then %d", texts[i], got[p.key], id)
		}
	}
	if fmt.Sprint(a.ids()) != fmt.Sprint(b.ids()) {
		t.Errorf("ids %v vs %v", a.ids(), b.ids())
	}
}

// A hash collision is resolved by probing; the loser's ID depends on
// arrival order, which a restored numbering (Options.SelectorIDs) pins.
// An ID released by one selector is never given to another.
func TestSelectorIDCollisions(t *testing.T) {
	p, q := collidingPeers(t)
	ids := map[identity.NumericIdentity]identity.Labels{}
	base := baseID(p.key)

	a := newSelectorCache(nil)
	pa, qa := a.acquire(p, ids, newFQDNState()), a.acquire(q, ids, newFQDNState())
	if pa != base || qa == pa || qa == 0 {
		t.Fatalf("colliding selectors got %d and %d (base %d)", pa, qa, base)
	}
	// Reverse order: q wins the base ...
	b := newSelectorCache(nil)
	qb, pb := b.acquire(q, ids, newFQDNState()), b.acquire(p, ids, newFQDNState())
	if qb != base || pb == qb {
		t.Fatalf("reverse order got %d and %d", qb, pb)
	}
	// ... unless the numbering of a is restored.
	c := newSelectorCache(a.ids())
	qc, pc := c.acquire(q, ids, newFQDNState()), c.acquire(p, ids, newFQDNState())
	if qc != qa || pc != pa {
		t.Fatalf("restored numbering not kept: p %d→%d, q %d→%d", pa, pc, qa, qc)
	}
	// Released, p's ID goes to nobody else, but p takes it back.
	c.release(pc)
	c.release(qc)
	q2 := c.acquire(q, ids, newFQDNState())
	if q2 == pc {
		t.Fatalf("ID %d of a released selector went to another one", pc)
	}
	if q2 != qc {
		t.Fatalf("q did not get its own ID back: %d, had %d", q2, qc)
	}
	if p2 := c.acquire(p, ids, newFQDNState()); p2 != pc {
		t.Fatalf("p did not get its own ID back: %d, had %d", p2, pc)
	}
}
