package difftest_test

// Differential tests: Bulwark's engine (through the offline checker that
// `bulwark policy check` runs) against reference engines, cell by cell,
// on random valid scenarios of our own generator:
//   - NetworkPolicy: cyclonus' matcher (the Kubernetes community's
//     NetworkPolicy oracle, in process) and Cilium's own engine
//     (pkg/k8s.ParseNetworkPolicy + pkg/policy, v1.20.2, in test/ciliumref);
//   - CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy: Cilium's own
//     engine (test/ciliumref).
//
// BULWARK_DIFFTEST_SCENARIOS sets the number of scenarios of each kind
// (default 150), BULWARK_DIFFTEST_SEED the first seed (default 1).
//
// Justified differences (counted and reported, never ignored silently):
//  1. ipBlock and pod addresses (cyclonus only). Kubernetes leaves it to
//     the implementation whether an ipBlock selects pod IPs; cyclonus says
//     yes, Cilium and Bulwark say no (a pod address carries its pod
//     identity). Cyclonus is asked with pod addresses that no ipBlock
//     covers; cells where its raw answer differs are counted. Minimal
//     case: TestJustifiedIPBlockPodAddress.
//  3. policyTypes (Cilium only): Cilium v1.20 enforces a NetworkPolicy
//     section whose direction policyTypes leaves out; Kubernetes' API
//     reference says the policy relates to the listed directions only
//     (cyclonus agrees). Cilium is asked with such sections removed;
//     cells where its raw answer differs are counted. Minimal case:
//     TestExactSemantics in internal/policy ("policyTypes leaves out").
//  4. cyclonus' NotIn never matches an object that lacks the key;
//     Kubernetes' says it does ("notin" selects objects without the
//     key). Cyclonus is asked with labels completed by a sentinel value
//     and selectors rewritten to match (see cyclonus below); cells where
//     its raw answer differs are counted. Minimal case:
//     TestJustifiedCyclonusNotIn.
//  2. Pods of one identity that disagree on a named port: not generated
//     (see package doc); per-identity tables cannot tell such pods apart.
//     Minimal case: TestJustifiedNamedPortPerIdentity.
// Every other cell must agree with every reference engine.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/offline/check"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/difftest"
	"github.com/mattfenwick/cyclonus/pkg/matcher"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s=%q: not a number", name, v)
	}
	return n
}

// bulwark decides every cell of a scenario with the offline checker. It
// also builds the same state incrementally (one object per update, in a
// shuffled order, with one policy deleted and put back) and fails if any
// cell differs from the state built at once: the agent applies changes
// incrementally.
func bulwark(s *difftest.Scenario) ([]difftest.Verdict, error) {
	st, err := stateOf(s)
	if err != nil {
		return nil, err
	}
	inc, err := incrementalStateOf(s)
	if err != nil {
		return nil, fmt.Errorf("incremental: %w", err)
	}
	out := make([]difftest.Verdict, 0, len(s.Cells))
	for _, c := range s.Cells {
		f := check.Flow{Src: c.Src, Dst: c.Dst, Port: c.Port, Protocol: c.Protocol}
		res, err := st.Check(f)
		if err != nil {
			return nil, fmt.Errorf("check %v: %w", c, err)
		}
		v := difftest.Verdict{Egress: res.Egress == "allowed", Ingress: res.Ingress == "allowed"}
		ri, err := inc.Check(f)
		if err != nil {
			return nil, fmt.Errorf("incremental check %v: %w", c, err)
		}
		if vi := (difftest.Verdict{Egress: ri.Egress == "allowed", Ingress: ri.Ingress == "allowed"}); vi != v {
			return nil, fmt.Errorf("%s -> %s %s/%d: built at once %+v, incrementally %+v", c.Src, c.Dst, c.Protocol, c.Port, v, vi)
		}
		out = append(out, v)
	}
	return out, nil
}

func incrementalStateOf(s *difftest.Scenario) (*check.State, error) {
	text, err := s.State()
	if err != nil {
		return nil, err
	}
	objs, errs := manifest.Decode("scenario.yaml", []byte(text))
	if len(errs) > 0 {
		return nil, fmt.Errorf("decode: %v", errs)
	}
	r := rand.New(rand.NewSource(s.Seed))
	r.Shuffle(len(objs), func(i, j int) { objs[i], objs[j] = objs[j], objs[i] })
	repo := policy.NewRepository(policy.Options{})
	var last *manifest.Object
	for _, o := range objs {
		if _, err := repo.Upsert(o.Obj); err != nil {
			return nil, err
		}
		if o.Kind != "Namespace" && o.Kind != "Pod" {
			last = o
		}
	}
	if last != nil {
		if _, err := repo.Delete(policy.ObjectRef{Kind: last.Kind, Namespace: last.Namespace, Name: last.Name}); err != nil {
			return nil, err
		}
		if _, err := repo.Upsert(last.Obj); err != nil {
			return nil, err
		}
	}
	return &check.State{Repo: repo, Snap: repo.Snapshot()}, nil
}

func stateOf(s *difftest.Scenario) (*check.State, error) {
	text, err := s.State()
	if err != nil {
		return nil, err
	}
	objs, errs := manifest.Decode("scenario.yaml", []byte(text))
	if len(errs) > 0 {
		return nil, fmt.Errorf("decode: %v", errs)
	}
	return check.FromSet(manifest.NewSet(objs...))
}

var (
	refOnce sync.Once
	refBin  string
	refErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if refBin != "" {
		os.RemoveAll(filepath.Dir(refBin))
	}
	os.Exit(code)
}

type ciliumResult struct {
	Error    string             `json:"error"`
	Verdicts []difftest.Verdict `json:"verdicts"`
}

// ciliumRef runs test/ciliumref (its own module, Cilium's pins) on the
// scenarios and returns its results in order.
func ciliumRef(t *testing.T, scenarios []*difftest.Scenario) []ciliumResult {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "..", "..", "..", "test", "ciliumref")
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	refOnce.Do(func() {
		tmp, err := os.MkdirTemp("", "bulwark-ciliumref-")
		if err != nil {
			refErr = err
			return
		}
		refBin = filepath.Join(tmp, "ciliumref")
		build := exec.Command(goBin, "build", "-o", refBin, ".")
		build.Dir = dir
		if out, err := build.CombinedOutput(); err != nil {
			refErr = fmt.Errorf("build test/ciliumref: %v\n%s", err, out)
		}
	})
	if refErr != nil {
		t.Fatal(refErr)
	}
	bin := refBin
	var in bytes.Buffer
	enc := json.NewEncoder(&in)
	for _, s := range scenarios {
		if err := enc.Encode(s); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin)
	cmd.Stdin = &in
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ciliumref: %v\n%s", err, stderr.String())
	}
	var res []ciliumResult
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var r ciliumResult
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("ciliumref output: %v", err)
		}
		res = append(res, r)
	}
	if len(res) != len(scenarios) {
		t.Fatalf("ciliumref answered %d of %d scenarios", len(res), len(scenarios))
	}
	return res
}

// cyclonus decides the cells of a NetworkPolicy scenario with cyclonus'
// matcher, asked three ways:
//   - exact: pod addresses that no ipBlock covers (Cilium and Bulwark
//     semantics, difference 1) and labels completed with a sentinel value
//     for every absent key of the vocabulary, selectors rewritten to
//     match (Exists k = NotIn k [sentinel], DoesNotExist k = In k
//     [sentinel]): cyclonus' NotIn wrongly never matches an object that
//     lacks the key (Kubernetes: "notin" also selects objects without the
//     key), which this encoding sidesteps exactly;
//   - raw ipBlock: real pod addresses, completed labels;
//   - raw selectors: uncovered addresses, labels as they are.
type cyclonus struct {
	s               *difftest.Scenario
	raw, patched    *matcher.Policy
	pods            map[string]difftest.Pod
	nsLabels        map[string]map[string]string
	podKeys, nsKeys []string
}

const absent = "absent-sentinel"

func newCyclonus(t *testing.T, s *difftest.Scenario) *cyclonus {
	var raw, patched []*networkingv1.NetworkPolicy
	for _, doc := range s.Policies {
		var np networkingv1.NetworkPolicy
		if err := yaml.UnmarshalStrict([]byte(doc), &np); err != nil {
			t.Fatalf("seed %d: decode policy: %v", s.Seed, err)
		}
		// The API server's defaulting, which cyclonus expects done.
		if len(np.Spec.PolicyTypes) == 0 {
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
			if len(np.Spec.Egress) > 0 {
				np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
			}
		}
		defaultProtocols(&np)
		raw = append(raw, &np)
		p := np.DeepCopy()
		rewriteSelectors(p)
		patched = append(patched, p)
	}
	c := &cyclonus{s: s, raw: matcher.BuildNetworkPolicies(false, raw), patched: matcher.BuildNetworkPolicies(false, patched),
		pods: map[string]difftest.Pod{}, nsLabels: map[string]map[string]string{}}
	c.podKeys, c.nsKeys = difftest.LabelKeys()
	for _, p := range s.Pods {
		c.pods[p.Ref()] = p
	}
	for _, ns := range s.Namespaces {
		c.nsLabels[ns.Name] = ns.Labels
	}
	return c
}

func rewriteSelector(ls *metav1.LabelSelector) {
	if ls == nil {
		return
	}
	for i := range ls.MatchExpressions {
		e := &ls.MatchExpressions[i]
		switch e.Operator {
		case metav1.LabelSelectorOpExists:
			e.Operator, e.Values = metav1.LabelSelectorOpNotIn, []string{absent}
		case metav1.LabelSelectorOpDoesNotExist:
			e.Operator, e.Values = metav1.LabelSelectorOpIn, []string{absent}
		}
	}
}

func rewriteSelectors(np *networkingv1.NetworkPolicy) {
	rewriteSelector(&np.Spec.PodSelector)
	peers := func(ps []networkingv1.NetworkPolicyPeer) {
		for i := range ps {
			rewriteSelector(ps[i].PodSelector)
			rewriteSelector(ps[i].NamespaceSelector)
		}
	}
	for i := range np.Spec.Ingress {
		peers(np.Spec.Ingress[i].From)
	}
	for i := range np.Spec.Egress {
		peers(np.Spec.Egress[i].To)
	}
}

func complete(ls map[string]string, keys []string) map[string]string {
	out := map[string]string{}
	for k, v := range ls {
		out[k] = v
	}
	for _, k := range keys {
		if _, ok := out[k]; !ok {
			out[k] = absent
		}
	}
	return out
}

func defaultProtocols(np *networkingv1.NetworkPolicy) {
	tcp := corev1.ProtocolTCP
	for i := range np.Spec.Ingress {
		for j := range np.Spec.Ingress[i].Ports {
			if np.Spec.Ingress[i].Ports[j].Protocol == nil {
				np.Spec.Ingress[i].Ports[j].Protocol = &tcp
			}
		}
	}
	for i := range np.Spec.Egress {
		for j := range np.Spec.Egress[i].Ports {
			if np.Spec.Egress[i].Ports[j].Protocol == nil {
				np.Spec.Egress[i].Ports[j].Protocol = &tcp
			}
		}
	}
}

type askMode int

const (
	exact askMode = iota
	rawIPBlock
	rawSelectors
)

func (c *cyclonus) decide(cell difftest.Cell, mode askMode) difftest.Verdict {
	peer := func(ref string, i int) *matcher.TrafficPeer {
		p, ok := c.pods[ref]
		if !ok {
			return &matcher.TrafficPeer{IP: ref}
		}
		ip := fmt.Sprintf("fd00::%d", i+1)
		if mode == rawIPBlock {
			ip = p.IP
		}
		podLabels, nsLabels := p.Labels, c.nsLabels[p.Namespace]
		if mode != rawSelectors {
			podLabels, nsLabels = complete(podLabels, c.podKeys), complete(nsLabels, c.nsKeys)
		}
		return &matcher.TrafficPeer{IP: ip, Internal: &matcher.InternalPeer{PodLabels: podLabels, NamespaceLabels: nsLabels, Namespace: p.Namespace}}
	}
	name := ""
	if p, ok := c.pods[cell.Dst]; ok {
		name = p.PortName(cell.Protocol, cell.Port)
	}
	pol := c.patched
	if mode == rawSelectors {
		pol = c.raw
	}
	tr := &matcher.Traffic{Source: peer(cell.Src, 0), Destination: peer(cell.Dst, 1), ResolvedPort: cell.Port, ResolvedPortName: name, Protocol: corev1.Protocol(cell.Protocol)}
	r := pol.IsTrafficAllowed(tr)
	v := difftest.Verdict{Egress: true, Ingress: true}
	if _, ok := c.pods[cell.Src]; ok {
		v.Egress = r.Egress.IsAllowed()
	}
	if _, ok := c.pods[cell.Dst]; ok {
		v.Ingress = r.Ingress.IsAllowed()
	}
	return v
}

// normalizePolicyTypes drops from NetworkPolicies the sections of the
// directions their policyTypes leave out (Kubernetes: such a section has
// no effect), for asking Cilium, which enforces them (difference 3).
func normalizePolicyTypes(t *testing.T, s *difftest.Scenario) *difftest.Scenario {
	out := *s
	out.Policies = nil
	for _, doc := range s.Policies {
		if !strings.Contains(doc, "kind: NetworkPolicy\n") {
			out.Policies = append(out.Policies, doc)
			continue
		}
		var np networkingv1.NetworkPolicy
		if err := yaml.UnmarshalStrict([]byte(doc), &np); err != nil {
			t.Fatalf("seed %d: decode policy: %v", s.Seed, err)
		}
		if len(np.Spec.PolicyTypes) > 0 {
			has := map[networkingv1.PolicyType]bool{}
			for _, pt := range np.Spec.PolicyTypes {
				has[pt] = true
			}
			if !has[networkingv1.PolicyTypeIngress] {
				np.Spec.Ingress = nil
			}
			if !has[networkingv1.PolicyTypeEgress] {
				np.Spec.Egress = nil
			}
		}
		b, err := yaml.Marshal(&np)
		if err != nil {
			t.Fatal(err)
		}
		out.Policies = append(out.Policies, string(b))
	}
	return &out
}

// tally counts compared cells and differences by class.
type tally struct {
	cells     int
	diffs     map[string]int
	justified map[string]int
	shown     int
}

func newTally() *tally { return &tally{diffs: map[string]int{}, justified: map[string]int{}} }

// minimal drops the scenario's policies one at a time while the cell
// still differs between Bulwark and the engine, for a readable report.
func minimal(t *testing.T, engine string, s *difftest.Scenario, c difftest.Cell) *difftest.Scenario {
	differs := func(pols []string) bool {
		cand := *s
		cand.Policies, cand.Cells = pols, []difftest.Cell{c}
		got, err := bulwark(&cand)
		if err != nil {
			return false
		}
		var want difftest.Verdict
		if engine == "cyclonus" {
			want = newCyclonus(t, &cand).decide(c, exact)
		} else {
			r := ciliumRef(t, []*difftest.Scenario{&cand})[0]
			if r.Error != "" {
				return false
			}
			want = r.Verdicts[0]
		}
		return got[0] != want
	}
	pols := s.Policies
	for i := 0; i < len(pols); {
		cand := append(append([]string(nil), pols[:i]...), pols[i+1:]...)
		if differs(cand) {
			pols = cand
		} else {
			i++
		}
	}
	out := *s
	out.Policies = pols
	return &out
}

func (ty *tally) differ(t *testing.T, engine string, s *difftest.Scenario, c difftest.Cell, got, want difftest.Verdict) {
	class := engine + ": "
	switch {
	case got.Egress != want.Egress && got.Ingress != want.Ingress:
		class += "both directions"
	case got.Egress != want.Egress:
		class += "egress"
	default:
		class += "ingress"
	}
	if got.Allowed() && !want.Allowed() {
		class += ", bulwark allows"
	} else if !got.Allowed() && want.Allowed() {
		class += ", bulwark denies"
	}
	ty.diffs[class]++
	ty.shown++
	if ty.shown <= 3 {
		m := minimal(t, engine, s, c)
		t.Errorf("seed %d: %s -> %s %s/%d: bulwark %+v, %s %+v\npolicies (minimised):\n%s\nnamespaces: %+v\npods: %+v",
			s.Seed, c.Src, c.Dst, c.Protocol, c.Port, got, engine, want, strings.Join(m.Policies, "---\n"), s.Namespaces, s.Pods)
	}
}

func (ty *tally) report(t *testing.T, what string, scenarios int) {
	var lines []string
	for k, n := range ty.diffs {
		lines = append(lines, fmt.Sprintf("%s: %d", k, n))
	}
	for k, n := range ty.justified {
		lines = append(lines, fmt.Sprintf("justified %s: %d", k, n))
	}
	sort.Strings(lines)
	t.Logf("%s: %d scenarios, %d cells compared; %s", what, scenarios, ty.cells, strings.Join(lines, "; "))
	if len(ty.diffs) > 0 {
		t.Errorf("%s: unexplained differences: %v", what, ty.diffs)
	}
	if ty.cells == 0 {
		t.Errorf("%s: no cell compared", what)
	}
}

func scenarios(t *testing.T, kind difftest.Kind) []*difftest.Scenario {
	n := envInt(t, "BULWARK_DIFFTEST_SCENARIOS", 150)
	seed := int64(envInt(t, "BULWARK_DIFFTEST_SEED", 1))
	out := make([]*difftest.Scenario, n)
	for i := range out {
		out[i] = difftest.Generate(seed+int64(i), kind)
	}
	return out
}

func TestDifferentialNetworkPolicy(t *testing.T) {
	scs := scenarios(t, difftest.NetworkPolicies)
	norm := make([]*difftest.Scenario, len(scs))
	for i, s := range scs {
		norm[i] = normalizePolicyTypes(t, s)
	}
	cil := ciliumRef(t, append(append([]*difftest.Scenario(nil), scs...), norm...))
	cilRaw, cilNorm := cil[:len(scs)], cil[len(scs):]
	cy, ci := newTally(), newTally()
	for i, s := range scs {
		got, err := bulwark(s)
		if err != nil {
			t.Fatalf("seed %d: bulwark: %v", s.Seed, err)
		}
		for _, r := range []ciliumResult{cilRaw[i], cilNorm[i]} {
			if r.Error != "" {
				t.Fatalf("seed %d: Cilium rejects a scenario Bulwark accepts: %s\n%s", s.Seed, r.Error, strings.Join(s.Policies, "---\n"))
			}
		}
		oracle := newCyclonus(t, s)
		for j, c := range s.Cells {
			want := oracle.decide(c, exact)
			cy.cells++
			if got[j] != want {
				cy.differ(t, "cyclonus", s, c, got[j], want)
			} else {
				if oracle.decide(c, rawIPBlock) != want {
					cy.justified["ipBlock selects pod addresses (1)"]++
				}
				if oracle.decide(c, rawSelectors) != want {
					cy.justified["cyclonus NotIn never matches a missing key"]++
				}
			}
			ci.cells++
			if got[j] != cilNorm[i].Verdicts[j] {
				ci.differ(t, "cilium", norm[i], c, got[j], cilNorm[i].Verdicts[j])
			} else if cilRaw[i].Verdicts[j] != got[j] {
				ci.justified["Cilium enforces a section policyTypes leaves out (3)"]++
			}
		}
	}
	cy.report(t, "NetworkPolicy vs cyclonus", len(scs))
	ci.report(t, "NetworkPolicy vs Cilium", len(scs))
}

func TestDifferentialCilium(t *testing.T) {
	scs := scenarios(t, difftest.CiliumPolicies)
	cil := ciliumRef(t, scs)
	ty := newTally()
	rejected := 0
	for i, s := range scs {
		got, err := bulwark(s)
		if cil[i].Error != "" {
			if err == nil {
				ty.diffs["validation: Cilium rejects, bulwark accepts"]++
				if ty.shown++; ty.shown <= 3 {
					t.Errorf("seed %d: Cilium rejects (%s), Bulwark accepts:\n%s", s.Seed, cil[i].Error, strings.Join(s.Policies, "---\n"))
				}
			}
			rejected++
			continue
		}
		if err != nil {
			ty.diffs["validation: bulwark rejects, Cilium accepts"]++
			if ty.shown++; ty.shown <= 3 {
				t.Errorf("seed %d: Bulwark rejects (%v), Cilium accepts", s.Seed, err)
			}
			continue
		}
		for j, c := range s.Cells {
			ty.cells++
			if got[j] != cil[i].Verdicts[j] {
				ty.differ(t, "cilium", s, c, got[j], cil[i].Verdicts[j])
			}
		}
	}
	if rejected > 0 {
		t.Logf("%d scenarios rejected by both engines", rejected)
	}
	ty.report(t, "CNP/CCNP vs Cilium", len(scs))
}

// All three kinds in one scenario, against Cilium's engine (which
// evaluates them together, as Bulwark does): allows add up across kinds,
// a deny of any kind wins.
func TestDifferentialMixed(t *testing.T) {
	scs := scenarios(t, difftest.MixedPolicies)
	norm := make([]*difftest.Scenario, len(scs))
	for i, s := range scs {
		norm[i] = normalizePolicyTypes(t, s)
	}
	cil := ciliumRef(t, append(append([]*difftest.Scenario(nil), scs...), norm...))
	cilRaw, cilNorm := cil[:len(scs)], cil[len(scs):]
	ty := newTally()
	for i, s := range scs {
		got, err := bulwark(s)
		if err != nil {
			t.Fatalf("seed %d: bulwark: %v", s.Seed, err)
		}
		for _, r := range []ciliumResult{cilRaw[i], cilNorm[i]} {
			if r.Error != "" {
				t.Fatalf("seed %d: Cilium rejects a scenario Bulwark accepts: %s", s.Seed, r.Error)
			}
		}
		for j, c := range s.Cells {
			ty.cells++
			if got[j] != cilNorm[i].Verdicts[j] {
				ty.differ(t, "cilium", norm[i], c, got[j], cilNorm[i].Verdicts[j])
			} else if cilRaw[i].Verdicts[j] != got[j] {
				ty.justified["Cilium enforces a section policyTypes leaves out (3)"]++
			}
		}
	}
	ty.report(t, "mixed kinds vs Cilium", len(scs))
}
