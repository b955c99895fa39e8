package policy

import (
	"fmt"
	"math/rand"
	"net/netip"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/api"
)

func fqdnPolicy(name string, sels ...api.FQDNSelector) *api.CiliumNetworkPolicy {
	return &api.CiliumNetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: api.GroupVersion, Kind: api.KindCNP},
		ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: name},
		Spec: &api.Rule{
			EndpointSelector: &api.EndpointSelector{LabelSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "x"}}},
			Egress: []api.EgressRule{{
				ToFQDNs: sels,
				ToPorts: []api.PortRule{{Ports: []api.PortProtocol{{Port: "443", Protocol: api.ProtoTCP}}}},
			}},
		},
	}
}

// fqdnSelectors maps each FQDN selector's description to its members.
func fqdnSelectors(r *Repository) map[string][]identity.NumericIdentity {
	s := r.Snapshot().Selectors
	out := map[string][]identity.NumericIdentity{}
	for _, id := range s.IDs() {
		if d := s.Describe(id); strings.HasPrefix(d, "fqdn(") {
			out[d] = s.Identities(id)
		}
	}
	return out
}

// The incremental membership of FQDN selectors equals a recomputation from
// scratch after any sequence of learn, replace and forget, with selectors
// coming and going; an address has one identity whatever the name.
func TestFQDNIncrementalMatchesRecompute(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	names := []string{"api.github.com", "s3.amazonaws.com", "a.b.example.com", "b.example.com", "example.com", "x.y.z.example.com", "evil.org"}
	addrs := []netip.Addr{}
	for i := 1; i <= 8; i++ {
		addrs = append(addrs, netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}))
	}
	sels := [][]api.FQDNSelector{
		{{MatchName: "api.github.com"}},
		{{MatchPattern: "*.amazonaws.com"}, {MatchName: "evil.org"}},
		{{MatchPattern: "**.example.com"}},
		{{MatchPattern: "*.example.com"}},
		{{MatchPattern: "*"}},
	}
	r := NewRepository(Options{})
	for step := 0; step < 400; step++ {
		switch k := rng.Intn(10); {
		case k < 5:
			var as []netip.Addr
			for j := rng.Intn(3); j >= 0; j-- {
				as = append(as, addrs[rng.Intn(len(addrs))])
			}
			if _, err := r.SetFQDN(names[rng.Intn(len(names))], as); err != nil {
				t.Fatal(err)
			}
		case k < 7:
			r.Forget(names[rng.Intn(len(names))])
		case k < 9:
			i := rng.Intn(len(sels))
			if _, err := r.Upsert(fqdnPolicy(fmt.Sprintf("p%d", i), sels[i]...)); err != nil {
				t.Fatal(err)
			}
		default:
			r.Delete(ObjectRef{Kind: KindCNP, Namespace: "a", Name: fmt.Sprintf("p%d", rng.Intn(len(sels)))})
		}
		// Recompute from scratch in a fresh repository with the same
		// learned names and policies, sharing the allocator (numbers).
		fresh := NewRepository(Options{Allocator: r.Allocator()})
		for n, as := range r.FQDNs() {
			if _, err := fresh.SetFQDN(n, as); err != nil {
				t.Fatal(err)
			}
		}
		for _, p := range r.Snapshot().Policies() {
			var i int
			fmt.Sscanf(p.Name, "p%d", &i)
			if _, err := fresh.Upsert(fqdnPolicy(p.Name, sels[i]...)); err != nil {
				t.Fatal(err)
			}
		}
		got, want := fqdnSelectors(r), fqdnSelectors(fresh)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("step %d: incremental %v, recomputed %v", step, got, want)
		}
	}
	// One address, one identity, whatever the name.
	r.SetFQDN("one.example.com", addrs[:1])
	r.SetFQDN("two.example.com", addrs[:1])
	ipc := r.Snapshot().IPCache
	if id := ipc.Lookup(addrs[0]); !id.IsLocal() {
		t.Fatalf("learned address has identity %v, want a local one", id)
	}
}

func TestFQDNSelectsLearnedAddresses(t *testing.T) {
	r := NewRepository(Options{})
	if _, err := r.Upsert(fqdnPolicy("p", api.FQDNSelector{MatchName: "api.github.com"}, api.FQDNSelector{MatchPattern: "**.amazonaws.com"})); err != nil {
		t.Fatal(err)
	}
	gh, s3, other := netip.MustParseAddr("198.18.0.10"), netip.MustParseAddr("198.18.0.11"), netip.MustParseAddr("198.18.0.12")
	ch, err := r.SetFQDN("API.GitHub.com.", []netip.Addr{gh})
	if err != nil || !ch.IPCache || len(ch.Selectors) != 1 || len(ch.Endpoints) != 0 {
		t.Fatalf("change %+v %v: want one selector and the ipcache, no endpoint", ch, err)
	}
	r.SetFQDN("bucket.s3.amazonaws.com", []netip.Addr{s3})
	r.SetFQDN("amazonaws.com", []netip.Addr{other}) // "**." needs a label
	members := func() map[identity.NumericIdentity]bool {
		out := map[identity.NumericIdentity]bool{}
		for _, ids := range fqdnSelectors(r) {
			for _, id := range ids {
				out[id] = true
			}
		}
		return out
	}
	ipc := r.Snapshot().IPCache
	m := members()
	if !m[ipc.Lookup(gh)] || !m[ipc.Lookup(s3)] || m[ipc.Lookup(other)] || len(m) != 2 {
		t.Fatalf("members %v; gh %v s3 %v other %v", m, ipc.Lookup(gh), ipc.Lookup(s3), ipc.Lookup(other))
	}
	// Replacing the addresses of a name takes the old one out.
	r.SetFQDN("api.github.com", []netip.Addr{other})
	ipc = r.Snapshot().IPCache
	m = members()
	if m[ipc.Lookup(gh)] || !m[ipc.Lookup(other)] || ipc.Lookup(gh) != identity.WorldIPv4 {
		t.Fatalf("after replace: members %v, gh %v", m, ipc.Lookup(gh))
	}
}

func TestFQDNInvalidPatternRefused(t *testing.T) {
	r := NewRepository(Options{})
	_, err := r.Upsert(fqdnPolicy("p", api.FQDNSelector{MatchPattern: "a.**.com"}))
	if err == nil || !strings.Contains(err.Error(), "toFQDNs") {
		t.Fatalf("err %v", err)
	}
}
