package policy_test

import (
	"fmt"
	"math/rand"
	"net/netip"
	"testing"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/api"
	"github.com/bulwark-net/bulwark/internal/policy/policytest"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// A repository updated by a long random sequence of changes (policies of
// all kinds replaced and deleted, pods relabelled, deleted and recreated,
// namespaces relabelled) decides every flow exactly as a repository built
// from scratch from the final objects.
func TestIncrementalEqualsRebuild(t *testing.T) {
	size := policytest.Size{Namespaces: 3, LabelSets: 12, Pods: 24, Policies: 40}
	st := policytest.Build(size)
	apps := size.LabelSets / size.Namespaces
	objects := map[string]any{}
	keyOf := func(o any) string {
		switch v := o.(type) {
		case *corev1.Namespace:
			return "ns/" + v.Name
		case *corev1.Pod:
			return "pod/" + v.Namespace + "/" + v.Name
		case *networkingv1.NetworkPolicy:
			return "np/" + v.Namespace + "/" + v.Name
		case *api.CiliumNetworkPolicy:
			return "cnp/" + v.Namespace + "/" + v.Name
		case *api.CiliumClusterwideNetworkPolicy:
			return "ccnp/" + v.Name
		}
		panic(fmt.Sprintf("%T", o))
	}
	for _, o := range st.Objects() {
		objects[keyOf(o)] = o
	}
	repo := policy.NewRepository(policy.Options{})
	if _, err := repo.Upsert(st.Objects()...); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(1))
	for step := 0; step < 300; step++ {
		switch rng.Intn(6) {
		case 0: // replace a CNP with another port
			i := rng.Intn(size.Policies)
			ns := fmt.Sprintf("ns-%d", i%size.Namespaces)
			p := policytest.CNP(i, ns, rng.Intn(apps), apps, 8000+rng.Intn(3))
			objects[keyOf(p)] = p
			mustUpsert(t, repo, p)
		case 1: // delete a policy
			for k, o := range objects {
				var ref policy.ObjectRef
				switch v := o.(type) {
				case *networkingv1.NetworkPolicy:
					ref = policy.ObjectRef{Kind: "NetworkPolicy", Namespace: v.Namespace, Name: v.Name}
				case *api.CiliumNetworkPolicy:
					ref = policy.ObjectRef{Kind: api.KindCNP, Namespace: v.Namespace, Name: v.Name}
				case *api.CiliumClusterwideNetworkPolicy:
					ref = policy.ObjectRef{Kind: api.KindCCNP, Name: v.Name}
				default:
					continue
				}
				delete(objects, k)
				if _, err := repo.Delete(ref); err != nil {
					t.Fatal(err)
				}
				break
			}
		case 2: // relabel a pod
			p := st.Pods[rng.Intn(len(st.Pods))].DeepCopy()
			if _, ok := objects[keyOf(p)]; !ok {
				continue
			}
			p.Labels["app"] = fmt.Sprintf("app-%d", rng.Intn(apps))
			objects[keyOf(p)] = p
			mustUpsert(t, repo, p)
		case 3: // delete or restore a pod
			p := st.Pods[rng.Intn(len(st.Pods))]
			if _, ok := objects[keyOf(p)]; ok {
				delete(objects, keyOf(p))
				if _, err := repo.Delete(policy.ObjectRef{Kind: "Pod", Namespace: p.Namespace, Name: p.Name}); err != nil {
					t.Fatal(err)
				}
			} else {
				objects[keyOf(p)] = p
				mustUpsert(t, repo, p)
			}
		case 4: // relabel a namespace
			ns := st.Namespaces[rng.Intn(len(st.Namespaces))].DeepCopy()
			ns.Labels["team"] = fmt.Sprintf("t%d", rng.Intn(5))
			objects[keyOf(ns)] = ns
			mustUpsert(t, repo, ns)
		case 5: // restore an original policy
			o := st.Policies[rng.Intn(len(st.Policies))]
			objects[keyOf(o)] = o
			mustUpsert(t, repo, o)
		}
		if step%50 != 49 {
			continue
		}
		var all []any
		for _, o := range objects {
			all = append(all, o)
		}
		fresh := policy.NewRepository(policy.Options{})
		if _, err := fresh.Upsert(all...); err != nil {
			t.Fatal(err)
		}
		compareRepos(t, step, repo.Snapshot(), fresh.Snapshot())
	}
}

func mustUpsert(t *testing.T, repo *policy.Repository, objs ...any) {
	t.Helper()
	if _, err := repo.Upsert(objs...); err != nil {
		t.Fatal(err)
	}
}

func compareRepos(t *testing.T, step int, a, b *policy.Snapshot) {
	t.Helper()
	if len(a.Endpoints) != len(b.Endpoints) {
		t.Fatalf("step %d: %d endpoints vs %d", step, len(a.Endpoints), len(b.Endpoints))
	}
	external := []string{"172.16.0.9", "172.16.1.9", "172.17.3.3", "192.168.3.1", "203.0.0.5", "8.8.8.8"}
	type peer struct {
		key  *policy.EndpointKey
		addr string
	}
	var peers []peer
	for _, k := range a.EndpointKeys() {
		k := k
		peers = append(peers, peer{key: &k})
	}
	for _, e := range external {
		peers = append(peers, peer{addr: e})
	}
	verdict := func(s *policy.Snapshot, src, dst peer, proto resolved.Protocol, port uint16) (resolved.Verdict, resolved.Verdict, string) {
		id := func(p peer) (identity.NumericIdentity, *policy.Endpoint) {
			if p.key != nil {
				ep := s.Endpoints[*p.key]
				return ep.Identity, ep
			}
			return s.IPCache.Lookup(netip.MustParseAddr(p.addr)), nil
		}
		sid, sep := id(src)
		did, dep := id(dst)
		eg, in := resolved.Allow, resolved.Allow
		var refs string
		if sep != nil {
			d := sep.Policy.Egress.Lookup(s.Selectors, did, proto, port)
			eg = d.Verdict
			refs += fmt.Sprint(d.Policies(&sep.Policy.Egress))
		}
		if dep != nil {
			d := dep.Policy.Ingress.Lookup(s.Selectors, sid, proto, port)
			in = d.Verdict
			refs += fmt.Sprint(d.Policies(&dep.Policy.Ingress))
		}
		return eg, in, refs
	}
	cells := 0
	for _, src := range peers {
		for _, dst := range peers {
			if src.key == nil && dst.key == nil {
				continue
			}
			for _, port := range []uint16{5432, 8000, 8001, 8080, 9090} {
				for _, proto := range []resolved.Protocol{resolved.ProtoTCP, resolved.ProtoUDP} {
					cells++
					e1, i1, r1 := verdict(a, src, dst, proto, port)
					e2, i2, r2 := verdict(b, src, dst, proto, port)
					if e1 != e2 || i1 != i2 || r1 != r2 {
						t.Fatalf("step %d: %v -> %v %v/%d: incremental %v/%v %s, rebuilt %v/%v %s", step, src, dst, proto, port, e1, i1, r1, e2, i2, r2)
					}
				}
			}
		}
	}
	if cells == 0 {
		t.Fatal("no cells")
	}
}
