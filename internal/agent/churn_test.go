package agent

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bulwark-net/bulwark/internal/datapath"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/sandbox"
	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
)

// churnNode is a node with a real datapath (one endpoint on a dummy link
// in a test namespace) and a real repository, without a sandbox: what the
// agent's syncDatapath drives for each change.
func churnNode(t *testing.T) *node {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads BPF programs and creates a network namespace")
	}
	b := make([]byte, 3)
	rand.Read(b)
	name := "bwk-churn-" + hex.EncodeToString(b)
	if err := netns.Create(name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Delete(name) })
	var ifindex int
	if err := netns.Do(netns.Path(name), func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ep0"}, PeerName: "ep0p"}); err != nil {
			return err
		}
		l, err := netlink.LinkByName("ep0")
		if err != nil {
			return err
		}
		ifindex = l.Attrs().Index
		return netlink.LinkSetUp(l)
	}); err != nil {
		t.Fatal(err)
	}
	pins := filepath.Join("/sys/fs/bpf", name)
	dp, err := datapath.Open(datapath.Options{PinDir: pins, ConntrackGCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dp.Destroy()
		os.RemoveAll(pins)
	})
	n := &node{
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), paths: Paths{StateDir: t.TempDir()},
		dp: dp, repo: policy.NewRepository(policy.Options{}),
		attached: map[uint32]string{1: "demo/anchor"}, loaded: map[uint32]bool{},
		inRepo: map[policy.ObjectRef]bool{}, problems: map[string]string{}, desired: map[string]bool{},
		nodeNetns: netns.Path(name),
	}
	ns := &corev1.Namespace{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}, ObjectMeta: metav1.ObjectMeta{Name: "demo"}}
	anchor := podObject(sandbox.PodInfo{Namespace: "demo", Name: "anchor", Labels: map[string]string{"app": "anchor"},
		IPs: []netip.Addr{netip.MustParseAddr("10.244.200.1")}})
	if _, err := n.repo.Upsert(ns, anchor); err != nil {
		t.Fatal(err)
	}
	ep := n.repo.Snapshot().Endpoints[endpointKeyOf("demo", "anchor")]
	if err := dp.AttachEndpoint(datapath.Endpoint{ID: 1, IfIndex: ifindex, NetNSPath: netns.Path(name), Identity: ep.Identity}); err != nil {
		t.Fatal(err)
	}
	if err := n.syncDatapath(); err != nil {
		t.Fatal(err)
	}
	return n
}

// churnPolicy lets the anchor talk to churn pod i and to a /32 of its own.
func churnPolicy(t *testing.T, i int) any {
	t.Helper()
	doc := fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: churn-%d
  namespace: demo
spec:
  endpointSelector:
    matchLabels:
      app: anchor
  egress:
  - toEndpoints:
    - matchLabels:
        app: churn-%d
  - toCIDR:
    - 198.18.%d.%d/32
`, i, i, (i/250)%250, i%250+1)
	objs, errs := manifest.Decode("churn.yaml", []byte(doc))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	return objs[0].Obj
}

// churnState is what must return to its baseline.
type churnState struct {
	identities, identitiesFile, selectorsFile int
	maps                                      map[string]int
	// policyRaw: all bw_policy entries, the inactive buffers (each
	// endpoint's previous tables, here one cycle's) included;
	// maps["bw_policy"] counts the active tables only.
	policyRaw int
	heap      uint64
}

func measureChurn(t *testing.T, n *node, pins string) churnState {
	t.Helper()
	st := churnState{identities: n.repo.Allocator().Len(), maps: map[string]int{}}
	for _, f := range []struct {
		path string
		size *int
	}{{n.identitiesFile(), &st.identitiesFile}, {n.selectorsFile(), &st.selectorsFile}} {
		fi, err := os.Stat(f.path)
		if err != nil {
			t.Fatal(err)
		}
		*f.size = int(fi.Size())
	}
	for _, name := range []string{"bw_ipcache", "bw_policy", "bw_id_selectors"} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pins, name), nil)
		if err != nil {
			t.Fatalf("open pinned map %s: %v", name, err)
		}
		var k, v []byte
		it := m.Iterate()
		c := 0
		for it.Next(&k, &v) {
			c++
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		m.Close()
		st.maps[name] = c
	}
	st.policyRaw, st.maps["bw_policy"] = st.maps["bw_policy"], 0
	for _, ep := range n.dp.Endpoints() {
		d, err := n.dp.DumpEndpoint(ep.ID)
		if err != nil {
			t.Fatal(err)
		}
		st.maps["bw_policy"] += len(d.Entries)
	}

	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st.heap = ms.HeapAlloc
	return st
}

// TestIdentityChurn: pods with unique labels and policies with their own
// /32 come and go; with the grace period over, the identities, the
// persisted state, the BPF maps and the heap return to their baseline.
func TestIdentityChurn(t *testing.T) {
	n := churnNode(t)
	n.identityGrace = 0
	pins := datapathPins(t, n)
	cycles := 10000
	if testing.Short() {
		cycles = 500
	}
	upsert := func(i int) {
		pod := podObject(sandbox.PodInfo{Namespace: "demo", Name: fmt.Sprint("churn-", i),
			Labels: map[string]string{"app": fmt.Sprint("churn-", i)}, IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 244, 201, byte(i%250 + 1)})}})
		if _, err := n.repo.Upsert(pod, churnPolicy(t, i)); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		if err := n.syncDatapath(); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
	}
	remove := func(i int) {
		if _, err := n.repo.Delete(policy.ObjectRef{Kind: "Pod", Namespace: "demo", Name: fmt.Sprint("churn-", i)},
			policy.ObjectRef{Kind: policy.KindCNP, Namespace: "demo", Name: fmt.Sprint("churn-", i)}); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		if err := n.syncDatapath(); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
	}
	cycle := func(i int) {
		upsert(i)
		remove(i)
	}
	// Warm up (first allocations of the maps' and caches' structures).
	for i := 0; i < 10; i++ {
		cycle(i)
	}
	base := measureChurn(t, n, pins)
	var peak churnState
	for i := 10; i < cycles; i++ {
		if i == cycles/2 {
			// Mid-way, with one cycle's objects in place, the state is
			// larger: the measurement is not blind.
			upsert(i)
			peak = measureChurn(t, n, pins)
			remove(i)
			continue
		}
		cycle(i)
	}
	if err := n.syncDatapath(); err != nil {
		t.Fatal(err)
	}
	end := measureChurn(t, n, pins)
	t.Logf("%d cycles: identities %d -> %d; identities.json %d -> %d bytes; selectors.json %d -> %d bytes; maps %v -> %v; heap %.1f -> %.1f MiB",
		cycles, base.identities, end.identities, base.identitiesFile, end.identitiesFile, base.selectorsFile, end.selectorsFile,
		base.maps, end.maps, float64(base.heap)/(1<<20), float64(end.heap)/(1<<20))
	t.Logf("mid-way, one cycle's pod and policy in place: identities %d, identities.json %d bytes, selectors.json %d bytes, maps %v",
		peak.identities, peak.identitiesFile, peak.selectorsFile, peak.maps)
	if peak.identities != base.identities+2 || peak.maps["bw_ipcache"] <= base.maps["bw_ipcache"] || peak.maps["bw_policy"] <= base.maps["bw_policy"] ||
		peak.identitiesFile <= base.identitiesFile || peak.selectorsFile <= base.selectorsFile {
		t.Errorf("with one cycle's objects in place the state did not grow (pod and /32 identities, ipcache, policy, files): %+v vs %+v", peak, base)
	}
	if end.identities != base.identities || end.identitiesFile != base.identitiesFile || end.selectorsFile != base.selectorsFile {
		t.Errorf("after churn: identities %d, files %d/%d bytes; want the baseline %d, %d/%d",
			end.identities, end.identitiesFile, end.selectorsFile, base.identities, base.identitiesFile, base.selectorsFile)
	}
	if end.policyRaw != base.policyRaw {
		t.Errorf("bw_policy: %d entries after churn (inactive buffers included); baseline %d", end.policyRaw, base.policyRaw)
	}
	for name, c := range base.maps {
		if end.maps[name] != c {
			t.Errorf("map %s: %d entries after churn; baseline %d", name, end.maps[name], c)
		}
	}
	// The heap: nothing the agent keeps grows with the cycles. What still
	// does (about 190 bytes a cycle, 1.8 MiB over 10k) is outside the
	// agent: the datapath's rule names (Datapath.rules, dedupRefs) and the
	// selector cache's retired IDs. Without identity collection it grew
	// by about 6 KiB a cycle.
	if limit := 1<<20 + uint64(cycles)*300; end.heap > base.heap+limit {
		t.Errorf("heap grew from %.1f to %.1f MiB over %d cycles (limit %.1f MiB)", float64(base.heap)/(1<<20), float64(end.heap)/(1<<20), cycles, float64(limit)/(1<<20))
	}
	// Numbering: the identity of the anchor, in use throughout, never
	// moved, and the next new label set reuses a freed number.
	if id, _, _ := n.repo.Allocator().Allocate(podLabelsFor("demo", "fresh")); id >= identity.MinCluster+20 {
		t.Errorf("a new label set after churn got %d; want a reused low number", id)
	}
}

func podLabelsFor(ns, app string) identity.Labels {
	return identity.PodLabels(map[string]string{"app": app}, identity.PodContext{Namespace: ns})
}

func datapathPins(t *testing.T, n *node) string {
	t.Helper()
	for _, d := range []string{"/sys/fs/bpf"} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if filepath.Base(n.nodeNetns) == e.Name() {
				return filepath.Join(d, e.Name())
			}
		}
	}
	t.Fatal("no pin directory")
	return ""
}
