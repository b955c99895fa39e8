package agent

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/offline/validate"
	"github.com/bulwark-net/bulwark/internal/policy"
)

func seedDocs(t *testing.T, names ...string) []agentapi.Document {
	t.Helper()
	var docs []agentapi.Document
	for _, n := range names {
		p := filepath.Join("..", "..", "testdata", "seed", n)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, agentapi.Document{Source: p, Data: b})
	}
	return docs
}

func decode(t *testing.T, docs []agentapi.Document) []*manifest.Object {
	t.Helper()
	objs, err := validate.Documents(docs, true)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// Store: apply reports created/unchanged/configured like kubectl, persists,
// and a reopened store holds the same objects.
func TestStoreApplyPersistReload(t *testing.T) {
	file := filepath.Join(t.TempDir(), "objects.json")
	s, err := openStore(file)
	if err != nil {
		t.Fatal(err)
	}
	objs := decode(t, seedDocs(t, "sample-app.yaml", "default-deny.yaml"))
	p := s.begin()
	for _, o := range objs {
		if a, err := p.upsert(o); err != nil || a != "created" {
			t.Fatalf("first upsert of %s: %q, %v", o, a, err)
		}
	}
	if err := s.commit(p); err != nil {
		t.Fatal(err)
	}
	if s.revision != 1 {
		t.Errorf("revision %d, want 1", s.revision)
	}

	// The same documents again: unchanged, nothing written.
	p = s.begin()
	for _, o := range decode(t, seedDocs(t, "sample-app.yaml")) {
		if a, _ := p.upsert(o); a != "unchanged" {
			t.Errorf("re-upsert of %s: %q, want unchanged", o, a)
		}
	}
	if p.changed {
		t.Error("unchanged documents marked the store changed")
	}

	// A changed replica count: configured.
	changed := strings.Replace(string(seedDocs(t, "sample-app.yaml")[0].Data), "replicas: 2", "replicas: 3", -1)
	p = s.begin()
	var configured int
	for _, o := range decode(t, []agentapi.Document{{Source: "x.yaml", Data: []byte(changed)}}) {
		if a, _ := p.upsert(o); a == "configured" {
			configured++
		}
	}
	if configured != 2 { // frontend and backend have replicas: 2
		t.Errorf("%d objects configured, want 2", configured)
	}
	if err := s.commit(p); err != nil {
		t.Fatal(err)
	}

	re, err := openStore(file)
	if err != nil {
		t.Fatal(err)
	}
	if re.revision != s.revision || len(re.objects) != len(s.objects) {
		t.Fatalf("reopened: revision %d, %d objects; want %d, %d", re.revision, len(re.objects), s.revision, len(s.objects))
	}
	set := re.set()
	if len(set.Deployments) != 3 || len(set.NetworkPolicies) != 1 || len(set.Namespaces) != 1 {
		t.Errorf("reopened set: %v", set.Counts())
	}
	for _, d := range set.Deployments {
		if d.Name == "frontend" && *d.Spec.Replicas != 3 {
			t.Errorf("frontend replicas %d after reload, want 3", *d.Spec.Replicas)
		}
	}
	if set.Objects[0].Kind != "Namespace" {
		t.Errorf("set order starts with %s, want the Namespace first", set.Objects[0].Kind)
	}

	// Delete: present → deleted, absent → not found.
	p = re.begin()
	np := decode(t, seedDocs(t, "default-deny.yaml"))[0]
	if a := p.remove(np); a != "deleted" {
		t.Errorf("remove: %q", a)
	}
	if a := p.remove(np); a != "not found" {
		t.Errorf("second remove: %q", a)
	}

	// Deleting the namespace takes everything in it.
	nsObj := decode(t, seedDocs(t, "sample-app.yaml"))[0]
	if nsObj.Kind != "Namespace" {
		t.Fatalf("first object is %s", nsObj.Kind)
	}
	p.remove(nsObj)
	changes := p.cascadeNamespaces([]*manifest.Object{nsObj})
	if len(changes) != 6 || len(p.objects) != 0 {
		t.Errorf("cascade removed %d objects, %d left; want 6 and 0", len(changes), len(p.objects))
	}
}

func TestDecodeDocumentsAllOrNothing(t *testing.T) {
	good := seedDocs(t, "frontend-to-backend.yaml")[0]
	bad := agentapi.Document{Source: "bad.yaml", Data: []byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad, namespace: demo}
spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports:
      - port: "99999"
`)}
	_, err := validate.Documents([]agentapi.Document{good, bad}, true)
	if err == nil || !strings.Contains(err.Error(), "bad.yaml") || !strings.Contains(err.Error(), "99999") {
		t.Fatalf("err = %v; want an error naming bad.yaml and the port", err)
	}
	dup := []agentapi.Document{good, {Source: "again.yaml", Data: good.Data}}
	if _, err := validate.Documents(dup, true); err == nil || !strings.Contains(err.Error(), "defined twice") {
		t.Errorf("duplicate object: err = %v", err)
	}
	// Delete needs only the names.
	stub := agentapi.Document{Source: "stub.yaml", Data: []byte("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x, namespace: demo}\n")}
	if _, err := validate.Documents([]agentapi.Document{stub}, false); err != nil {
		t.Errorf("metadata-only document for delete: %v", err)
	}
	if _, err := validate.Documents([]agentapi.Document{stub}, true); err == nil {
		t.Error("metadata-only policy accepted for apply")
	}
	if _, err := validate.Documents([]agentapi.Document{{Source: "y.yaml", Data: []byte("kind: [")}}, false); err == nil {
		t.Error("invalid YAML accepted")
	}
}

func TestLock(t *testing.T) {
	p := NewPaths(PathsOptions{Instance: "locktest", RunRoot: t.TempDir(), StateRoot: t.TempDir()})
	l, err := AcquireLock(p)
	if err != nil {
		t.Fatal(err)
	}
	if pid, err := RunningPID(p); err != nil || pid != os.Getpid() {
		t.Errorf("RunningPID = %d, %v; want %d", pid, err, os.Getpid())
	}
	// flock is per open file description: a second open in this process
	// conflicts like another process would.
	if _, err := AcquireLock(p); !errors.Is(err, ErrRunning) {
		t.Errorf("second lock: %v, want ErrRunning", err)
	}
	l.Release()
	if pid, _ := RunningPID(p); pid != 0 {
		t.Errorf("RunningPID after release = %d", pid)
	}
	l2, err := AcquireLock(p)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	l2.Release()
}

func TestInstanceNames(t *testing.T) {
	for _, ok := range []string{"default", "e2e-1a2b3c", "a", "x-9"} {
		if err := ValidInstanceName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "a-", "A", "a/b", "../x", "abcdefghijklmnopqrstu"} {
		if ValidInstanceName(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestEndpointIDs(t *testing.T) {
	file := filepath.Join(t.TempDir(), "endpoints.json")
	e, _ := openEndpointIDs(file)
	a, _ := e.assign("demo/a")
	b, _ := e.assign("demo/b")
	if a != 1 || b != 2 {
		t.Fatalf("ids %d %d, want 1 2", a, b)
	}
	if again, _ := e.assign("demo/a"); again != a {
		t.Errorf("reassign gave %d", again)
	}
	e.release("demo/a")
	re, err := openEndpointIDs(file)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := re.lookup("demo/a"); ok {
		t.Error("released ID persisted")
	}
	if id, _ := re.lookup("demo/b"); id != 2 {
		t.Errorf("demo/b = %d after reload", id)
	}
	if c, _ := re.assign("demo/c"); c != 1 {
		t.Errorf("freed ID not reused: got %d", c)
	}
}

// Identities replayed in numeric order get their old numbers back.
func TestIdentitiesRestore(t *testing.T) {
	file := filepath.Join(t.TempDir(), "identities.json")
	a := identity.NewAllocator()
	mk := func(app string) identity.Labels {
		return identity.NewLabels(identity.Label{Source: "k8s", Key: "app", Value: app})
	}
	ids := map[string]identity.NumericIdentity{}
	for _, app := range []string{"web", "db", "api"} {
		id, _, _ := a.Allocate(mk(app))
		ids[app] = id
	}
	if err := saveIdentities(file, a); err != nil {
		t.Fatal(err)
	}
	b := identity.NewAllocator()
	if err := restoreIdentities(file, b); err != nil {
		t.Fatal(err)
	}
	for app, want := range ids {
		if got, ok := b.LookupLabels(mk(app)); !ok || got != want {
			t.Errorf("%s: restored %d (%v), want %d", app, got, ok, want)
		}
	}
	if err := restoreIdentities(filepath.Join(t.TempDir(), "none.json"), identity.NewAllocator()); err != nil {
		t.Errorf("missing file: %v", err)
	}
}

// CIDR (local) identities are persisted too, and numbering with gaps
// restores exactly; later allocations go above the restored ones.
func TestIdentitiesRestoreLocalAndGaps(t *testing.T) {
	file := filepath.Join(t.TempDir(), "identities.json")
	a := identity.NewAllocator()
	for _, p := range []string{"10.1.0.0/16", "192.168.3.0/24", "fd00::/64"} {
		if _, _, err := a.AllocateCIDR(netip.MustParsePrefix(p)); err != nil {
			t.Fatal(err)
		}
	}
	web := identity.NewLabels(identity.Label{Source: "k8s", Key: "app", Value: "web"})
	gap := identity.MinCluster + 7
	if err := a.Restore(gap, web); err != nil {
		t.Fatal(err)
	}
	if err := saveIdentities(file, a); err != nil {
		t.Fatal(err)
	}
	b := identity.NewAllocator()
	if err := restoreIdentities(file, b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a.All(), b.All()) {
		t.Fatalf("restored %v, want %v", b.All(), a.All())
	}
	db, _, _ := b.Allocate(identity.NewLabels(identity.Label{Source: "k8s", Key: "app", Value: "db"}))
	cidr, _, _ := b.AllocateCIDR(netip.MustParsePrefix("10.2.0.0/16"))
	if db <= gap || !cidr.IsLocal() {
		t.Fatalf("new identities %d, %d collide with restored ones", db, cidr)
	}
	if _, ok := a.LookupLabels(identity.CIDRLabels(netip.MustParsePrefix("10.2.0.0/16"))); ok {
		t.Fatal("allocators share state")
	}
	for id := range a.All() {
		if id == cidr {
			t.Fatalf("CIDR identity %d reused", cidr)
		}
	}
}

func TestSelectorIDsPersist(t *testing.T) {
	file := filepath.Join(t.TempDir(), "selectors.json")
	repo := policy.NewRepository(policy.Options{})
	set := setOf(t, seedDocs(t, "sample-app.yaml", "default-deny.yaml", "allow-dns.yaml", "frontend-to-backend.yaml")...)
	objs, _ := baseObjects(set)
	if _, err := repo.Upsert(objs...); err != nil {
		t.Fatal(err)
	}
	ids := repo.SelectorIDs()
	if len(ids) == 0 {
		t.Fatal("no selectors")
	}
	if err := saveSelectorIDs(file, ids); err != nil {
		t.Fatal(err)
	}
	got, err := restoreSelectorIDs(file)
	if err != nil || !reflect.DeepEqual(got, ids) {
		t.Fatalf("restored %v %v, want %v", got, err, ids)
	}
	again := policy.NewRepository(policy.Options{SelectorIDs: got})
	if _, err := again.Upsert(objs...); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(again.SelectorIDs(), ids) {
		t.Fatalf("repository with restored IDs numbers %v, want %v", again.SelectorIDs(), ids)
	}
	if none, err := restoreSelectorIDs(filepath.Join(t.TempDir(), "none.json")); err != nil || none != nil {
		t.Errorf("missing file: %v %v", none, err)
	}
}
