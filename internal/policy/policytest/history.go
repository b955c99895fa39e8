package policytest

import (
	"fmt"
	"math/rand"

	"github.com/bulwark-net/bulwark/internal/policy/api"
)

// History returns a sequence of upsert batches that ends in exactly the
// objects of s, by a path that depends on seed: the objects arrive
// shuffled and in several batches (pods before their namespace, policies
// before the pods they select), then some CiliumNetworkPolicies are
// replaced by variants with other peers and another CIDR, and some pods
// are relabelled, and finally every changed object is put back.
//
// Applying the batches in order to an empty repository gives the same
// objects as upserting s.Objects() at once: a repository is expected to
// compute the same policy either way (only what history may change, such
// as identity numbers, can differ).
func (s *State) History(seed int64) [][]any {
	rng := rand.New(rand.NewSource(seed))
	objs := s.Objects()
	rng.Shuffle(len(objs), func(i, j int) { objs[i], objs[j] = objs[j], objs[i] })
	var out [][]any
	for len(objs) > 0 {
		n := 1 + rng.Intn(len(objs))
		out = append(out, objs[:n])
		objs = objs[n:]
	}
	var changed, restore []any
	for i, p := range s.Policies {
		c, ok := p.(*api.CiliumNetworkPolicy)
		if !ok || rng.Intn(3) != 0 {
			continue
		}
		v := cnp(i, c.Namespace, 90+i, 1000)
		v.Name = c.Name
		v.Spec.Egress[1].ToCIDRSet = []api.CIDRRule{{Cidr: api.CIDR(fmt.Sprintf("10.%d.%d.0/24", 200+i/256, i%256))}}
		changed = append(changed, v)
		restore = append(restore, p)
	}
	for _, p := range s.Pods {
		if rng.Intn(3) != 0 {
			continue
		}
		v := p.DeepCopy()
		v.Labels["app"] = v.Labels["app"] + "-canary"
		changed = append(changed, v)
		restore = append(restore, p)
	}
	for _, n := range s.Namespaces {
		if rng.Intn(2) != 0 {
			continue
		}
		v := n.DeepCopy()
		v.Labels["team"] = "moved"
		changed = append(changed, v)
		restore = append(restore, n)
	}
	rng.Shuffle(len(changed), func(i, j int) { changed[i], changed[j] = changed[j], changed[i] })
	for _, o := range changed {
		out = append(out, []any{o})
	}
	rng.Shuffle(len(restore), func(i, j int) { restore[i], restore[j] = restore[j], restore[i] })
	for _, o := range restore {
		out = append(out, []any{o})
	}
	return out
}
