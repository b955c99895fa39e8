package policy_test

import (
	"fmt"
	"reflect"
	"slices"
	"testing"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/api"
	"github.com/bulwark-net/bulwark/internal/policy/policytest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// restartedRepository builds what a restarted agent builds: a fresh
// repository whose allocator holds the identities before persisted, fed
// the final objects at once (in another order).
func restartedRepository(t *testing.T, before *policy.Repository, objs []any, selectorIDs bool) *policy.Repository {
	t.Helper()
	alloc := identity.NewAllocator()
	for id, ls := range before.Allocator().All() {
		if id.IsReserved() {
			continue
		}
		if err := alloc.Restore(id, ls); err != nil {
			t.Fatal(err)
		}
	}
	opts := policy.Options{Allocator: alloc}
	if selectorIDs {
		opts.SelectorIDs = before.SelectorIDs()
	}
	after := policy.NewRepository(opts)
	if _, err := after.Upsert(objs...); err != nil {
		t.Fatal(err)
	}
	return after
}

// sameComputedState fails unless two snapshots would load identical
// datapath tables: endpoints with the same identity and resolved policy,
// the same selector IDs with the same members, the same ipcache.
func sameComputedState(t *testing.T, a, b *policy.Snapshot) {
	t.Helper()
	if !slices.Equal(a.EndpointKeys(), b.EndpointKeys()) {
		t.Fatalf("endpoints %v vs %v", a.EndpointKeys(), b.EndpointKeys())
	}
	for _, k := range a.EndpointKeys() {
		ea, eb := a.Endpoints[k], b.Endpoints[k]
		if ea.Identity != eb.Identity || ea.Labels.String() != eb.Labels.String() {
			t.Fatalf("%s: identity %d %s vs %d %s", k, ea.Identity, ea.Labels, eb.Identity, eb.Labels)
		}
		pa, pb := *ea.Policy, *eb.Policy
		pa.Revision, pb.Revision = 0, 0 // the repository's own counter
		if !reflect.DeepEqual(pa, pb) {
			t.Fatalf("%s: resolved policy differs:\n%+v\n%+v", k, ea.Policy, eb.Policy)
		}
	}
	if !slices.Equal(a.Selectors.IDs(), b.Selectors.IDs()) {
		t.Fatalf("selector IDs %v vs %v", a.Selectors.IDs(), b.Selectors.IDs())
	}
	for _, id := range a.Selectors.IDs() {
		if !slices.Equal(a.Selectors.Identities(id), b.Selectors.Identities(id)) {
			t.Fatalf("selector %d %s: members %v vs %v", id, a.Selectors.Describe(id), a.Selectors.Identities(id), b.Selectors.Identities(id))
		}
	}
	ipc := func(s *policy.Snapshot) map[string]identity.NumericIdentity {
		out := map[string]identity.NumericIdentity{}
		for _, e := range s.IPCache.Entries() {
			out[e.Prefix.String()] = e.Identity
		}
		return out
	}
	if !reflect.DeepEqual(ipc(a), ipc(b)) {
		t.Fatalf("ipcache %v vs %v", ipc(a), ipc(b))
	}
}

// A repository rebuilt at once from the objects another one reached
// through a long history, with the identities it persisted, computes the
// same state: same selector IDs (derived from the selectors, not from
// history), same identities (restored, CIDR ones too), same membership
// (identities that history left allocated but unused select nothing).
func TestRestartedRepositoryComputesTheSameState(t *testing.T) {
	st := policytest.Build(policytest.Size{Namespaces: 3, LabelSets: 12, Pods: 24, Policies: 40})
	for seed := int64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			before := policy.NewRepository(policy.Options{})
			for _, batch := range st.History(seed) {
				if _, err := before.Upsert(batch...); err != nil {
					t.Fatal(err)
				}
			}
			objs := st.Objects()
			slices.Reverse(objs)
			for _, restoreSelectors := range []bool{false, true} {
				after := restartedRepository(t, before, objs, restoreSelectors)
				sameComputedState(t, before.Snapshot(), after.Snapshot())
				if !reflect.DeepEqual(before.SelectorIDs(), after.SelectorIDs()) {
					t.Fatalf("selector numbering differs")
				}
			}
			// Without restored identities the numbering may differ, but
			// selector IDs still agree (they never depend on identities).
			fresh := policy.NewRepository(policy.Options{})
			if _, err := fresh.Upsert(objs...); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(before.SelectorIDs(), fresh.SelectorIDs()) {
				t.Fatalf("selector IDs depend on history")
			}
		})
	}
}

// Labels outside pod identities (identity.IsIdentityRelevant) cannot be
// selected: as in Cilium, a policy whose endpointSelector names
// pod-template-hash selects no pod, and pods of two rollouts share one
// identity, so peers selected by their app label are selected alike.
func TestNonIdentityLabelsAreNotSelectable(t *testing.T) {
	pod := func(name, hash string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name,
			Labels: map[string]string{"app": "web", "pod-template-hash": hash}}}
	}
	byHash := &api.CiliumNetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: api.GroupVersion, Kind: api.KindCNP},
		ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "by-hash"},
		Spec: &api.Rule{
			EndpointSelector: &api.EndpointSelector{LabelSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod-template-hash": "aaa"}}},
			Ingress:          []api.IngressRule{{}},
		},
	}
	repo := policy.NewRepository(policy.Options{})
	if _, err := repo.Upsert(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, pod("web-a", "aaa"), pod("web-b", "bbb"), byHash); err != nil {
		t.Fatal(err)
	}
	snap := repo.Snapshot()
	a, b := snap.Endpoints[policy.EndpointKey{Namespace: "demo", Name: "web-a"}], snap.Endpoints[policy.EndpointKey{Namespace: "demo", Name: "web-b"}]
	if a.Identity != b.Identity {
		t.Fatalf("two rollouts of web have identities %d and %d", a.Identity, b.Identity)
	}
	if a.Policy.Ingress.Enforced || len(a.Policy.Ingress.Selecting) > 0 {
		t.Fatalf("a selector on pod-template-hash selected %s: %+v", a.Key, a.Policy.Ingress)
	}
}
