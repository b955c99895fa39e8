package deploy

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
)

const (
	chartDir     = "../../../deploy/helm/bulwark"
	manifestFile = "../../../deploy/manifests/bulwark.yaml"
)

// chainedValues is the second values set every test renders: chained
// CNI, native routing, capabilities instead of privileged, no
// ServiceAccount of the chart's own name.
func chainedValues() map[string]any {
	return map[string]any{
		"cni":            map[string]any{"mode": "chained"},
		"nativeRouting":  true,
		"logLevel":       "debug",
		"hubble":         map[string]any{"listenAddress": "127.0.0.1:4244"},
		"agent":          map[string]any{"privileged": false},
		"serviceAccount": map[string]any{"name": "bulwark-agent"},
		"k8sServiceHost": "10.0.0.1",
		"k8sServicePort": 6443,
	}
}

type valuesCase struct {
	name   string
	values map[string]any
}

func valueSets() []valuesCase {
	return []valuesCase{{"defaults", nil}, {"chained", chainedValues()}}
}

func render(t *testing.T, o Options) (*Rendered, []*unstructured.Unstructured) {
	t.Helper()
	ch, err := LoadChart()
	if err != nil {
		t.Fatal(err)
	}
	r, err := Render(ch, o)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := Objects([]byte(r.Manifest))
	if err != nil {
		t.Fatal(err)
	}
	return r, objs
}

// TestPlainManifestsAreGenerated: the committed plain manifests are what
// the chart renders now.
func TestPlainManifestsAreGenerated(t *testing.T) {
	want, err := PlainManifests()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(manifestFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is stale: run 'go generate ./internal/k8s/deploy' and commit it", manifestFile)
	}
}

// TestEmbeddedChartIsTheDirectory: the embedded copy holds every file of
// the chart directory that Helm loads (nothing added later was left out
// of the go:embed list).
func TestEmbeddedChartIsTheDirectory(t *testing.T) {
	ch, err := LoadChart()
	if err != nil {
		t.Fatal(err)
	}
	embedded := map[string][]byte{}
	for _, f := range ch.Raw {
		embedded[f.Name] = f.Data
	}
	err = filepath.WalkDir(chartDir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(chartDir, path)
		if rel == "embed.go" {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if e, ok := embedded[filepath.ToSlash(rel)]; !ok || !bytes.Equal(e, data) {
			t.Errorf("%s: not embedded as it is on disk (add it to embed.go's go:embed list)", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestLint runs Helm's chart linter ('helm lint') on the chart directory
// with each values set: no warning, no error.
func TestLint(t *testing.T) {
	kv, err := common.ParseKubeVersion(KubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range valueSets() {
		t.Run(c.name, func(t *testing.T) {
			vals := c.values
			if vals == nil {
				vals = map[string]any{}
			}
			res := lint.RunAll(chartDir, vals, DefaultNamespace, lint.WithKubeVersion(kv))
			for _, m := range res.Messages {
				if m.Severity >= support.WarningSev {
					t.Errorf("lint: %s", m)
				} else {
					t.Logf("lint: %s", m)
				}
			}
		})
	}
}

// TestRenderRefusesBadValues: values the schema refuses fail the render
// naming the value; nothing is rendered.
func TestRenderRefusesBadValues(t *testing.T) {
	ch, err := LoadChart()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		values map[string]any
		want   string
	}{
		{"unknown mode", map[string]any{"cni": map[string]any{"mode": "overlay"}}, "mode"},
		{"unknown key", map[string]any{"nativeRouteing": true}, "nativeRouteing"},
		{"log level", map[string]any{"logLevel": "verbose"}, "logLevel"},
		{"relative conf dir", map[string]any{"cni": map[string]any{"confDir": "etc/cni"}}, "confDir"},
		{"health port", map[string]any{"health": map[string]any{"port": 70000}}, "port"},
		{"no service account", map[string]any{"serviceAccount": map[string]any{"create": false}}, "serviceAccount.name is required"},
	} {
		r, err := Render(ch, Options{Values: c.values})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Render = %v, want an error naming %q", c.name, err, c.want)
		}
		if r != nil {
			t.Errorf("%s: a refused render returned manifests", c.name)
		}
	}
}

func decode[T any](t *testing.T, u *unstructured.Unstructured) *T {
	t.Helper()
	var out T
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, &out, true); err != nil {
		t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
	}
	return &out
}

func find(objs []*unstructured.Unstructured, kind string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind {
			out = append(out, o)
		}
	}
	return out
}

// TestRenderedDaemonSet checks what the agent needs from its pod in both
// values sets: node network, every node, node-critical, the mounts, the
// init container, probes on the health endpoint, and references to the
// ServiceAccount and ConfigMap the same release renders.
func TestRenderedDaemonSet(t *testing.T) {
	for _, c := range valueSets() {
		t.Run(c.name, func(t *testing.T) {
			r, objs := render(t, Options{Values: c.values})
			checkRendered(t, objs, c.values != nil)
			mode := "standalone mode"
			if c.values != nil {
				mode = "chained mode"
			}
			if !strings.Contains(r.Notes, mode) || !strings.Contains(r.Notes, "rollout status daemonset/bulwark") {
				t.Errorf("NOTES.txt does not tell the %s and how to watch the rollout:\n%s", mode, r.Notes)
			}
		})
	}
}

func checkRendered(t *testing.T, objs []*unstructured.Unstructured, chained bool) {
	t.Helper()
	dss := find(objs, "DaemonSet")
	sas := find(objs, "ServiceAccount")
	cms := find(objs, "ConfigMap")
	if len(dss) != 1 || len(sas) != 1 || len(cms) != 1 {
		t.Fatalf("rendered %d DaemonSets, %d ServiceAccounts, %d ConfigMaps; want one each", len(dss), len(sas), len(cms))
	}
	ds := decode[appsv1.DaemonSet](t, dss[0])
	sa := decode[corev1.ServiceAccount](t, sas[0])
	cm := decode[corev1.ConfigMap](t, cms[0])
	spec := ds.Spec.Template.Spec
	if spec.ServiceAccountName != sa.Name || sa.Namespace != ds.Namespace {
		t.Errorf("DaemonSet runs as ServiceAccount %q, the chart renders %s/%s", spec.ServiceAccountName, sa.Namespace, sa.Name)
	}
	if cm.Namespace != ds.Namespace {
		t.Errorf("ConfigMap in %q, DaemonSet in %q", cm.Namespace, ds.Namespace)
	}
	if !spec.HostNetwork || spec.PriorityClassName != "system-node-critical" {
		t.Errorf("hostNetwork %v priorityClassName %q; want true, system-node-critical", spec.HostNetwork, spec.PriorityClassName)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" {
		t.Errorf("tolerations %+v, want one tolerating every taint", spec.Tolerations)
	}
	if len(spec.InitContainers) != 1 || !strings.Contains(strings.Join(spec.InitContainers[0].Command, " "), "install-cni") {
		t.Fatalf("init containers %+v, want install-cni", spec.InitContainers)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want the agent", len(spec.Containers))
	}
	agent := spec.Containers[0]
	args := strings.Join(agent.Args, " ")
	for _, want := range []string{"agent", "--kubernetes", "--node-name=$(NODE_NAME)", "--cni-mode=$(BULWARK_CNI_MODE)", "--health-addr=127.0.0.1:9879"} {
		if !strings.Contains(args, want) {
			t.Errorf("agent args %q lack %q", args, want)
		}
	}
	// Every $(VAR) in the arguments is an environment variable, and every
	// ConfigMap reference names a key the ConfigMap has.
	env := map[string]corev1.EnvVar{}
	for _, e := range agent.Env {
		env[e.Name] = e
		if ref := e.ValueFrom; ref != nil && ref.ConfigMapKeyRef != nil {
			if ref.ConfigMapKeyRef.Name != cm.Name {
				t.Errorf("env %s reads ConfigMap %q, the chart renders %q", e.Name, ref.ConfigMapKeyRef.Name, cm.Name)
			}
			if _, ok := cm.Data[ref.ConfigMapKeyRef.Key]; !ok {
				t.Errorf("env %s reads key %q the ConfigMap lacks", e.Name, ref.ConfigMapKeyRef.Key)
			}
		}
	}
	for _, a := range agent.Args {
		if i := strings.Index(a, "$("); i >= 0 {
			name := strings.TrimSuffix(a[i+2:], ")")
			if _, ok := env[name]; !ok {
				t.Errorf("argument %q names $(%s), which is not in the container's environment", a, name)
			}
		}
	}
	if nn := env["NODE_NAME"]; nn.ValueFrom == nil || nn.ValueFrom.FieldRef == nil || nn.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("NODE_NAME = %+v, want the downward API's spec.nodeName", nn)
	}
	wantMode := "standalone"
	if chained {
		wantMode = "chained"
		if cm.Data["native-routing"] != "true" {
			t.Errorf("native-routing = %q with nativeRouting true", cm.Data["native-routing"])
		}
		if env["KUBERNETES_SERVICE_HOST"].Value != "10.0.0.1" || env["KUBERNETES_SERVICE_PORT"].Value != "6443" {
			t.Errorf("k8sServiceHost/Port not passed: %+v %+v", env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"])
		}
	}
	if cm.Data["cni-mode"] != wantMode || cm.Data["cni-conf"] != "/etc/cni/net.d/05-bulwark.conflist" {
		t.Errorf("ConfigMap data %v, want cni-mode %s and the 05-bulwark.conflist path", cm.Data, wantMode)
	}
	for _, p := range []*corev1.Probe{agent.LivenessProbe, agent.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Host != "127.0.0.1" || p.HTTPGet.Port.IntValue() != 9879 {
			t.Errorf("probe %+v, want an HTTP GET of 127.0.0.1:9879", p)
		}
	}
	if agent.LivenessProbe.HTTPGet.Path != "/healthz" || agent.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("probe paths %s, %s; want /healthz, /readyz", agent.LivenessProbe.HTTPGet.Path, agent.ReadinessProbe.HTTPGet.Path)
	}
	// Mounts: host path -> (container path, propagation, read-only).
	vols := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath == nil {
			t.Errorf("volume %s is not a host path", v.Name)
			continue
		}
		vols[v.Name] = v.HostPath.Path
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range agent.VolumeMounts {
		mounts[vols[m.Name]] = m
	}
	sc := agent.SecurityContext
	bpfProp := corev1.MountPropagationBidirectional
	if chained {
		bpfProp = corev1.MountPropagationHostToContainer
		if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.Capabilities == nil {
			t.Fatalf("security context %+v, want unprivileged with capabilities", sc)
		}
		var caps []string
		for _, c := range sc.Capabilities.Add {
			caps = append(caps, string(c))
		}
		for _, want := range []string{"NET_ADMIN", "SYS_ADMIN", "BPF", "PERFMON", "SYS_RESOURCE"} {
			if !strings.Contains(strings.Join(caps, ","), want) {
				t.Errorf("capabilities %v lack %s", caps, want)
			}
		}
	} else if sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Errorf("security context %+v, want privileged by default", sc)
	}
	for host, want := range map[string]struct {
		ro   bool
		prop corev1.MountPropagationMode
	}{
		"/sys/fs/bpf": {false, bpfProp}, "/sys/fs/cgroup": {false, corev1.MountPropagationHostToContainer},
		"/run/bulwark": {false, ""}, "/etc/cni/net.d": {false, ""}, "/opt/cni/bin": {true, ""},
		"/var/lib/bulwark": {false, ""},
	} {
		m, ok := mounts[host]
		if !ok {
			t.Errorf("the agent does not mount %s", host)
			continue
		}
		if m.MountPath != host || m.ReadOnly != want.ro {
			t.Errorf("%s mounted at %s read-only %v; want at the same path, read-only %v", host, m.MountPath, m.ReadOnly, want.ro)
		}
		var got corev1.MountPropagationMode
		if m.MountPropagation != nil {
			got = *m.MountPropagation
		}
		if got != want.prop {
			t.Errorf("%s propagation %q, want %q", host, got, want.prop)
		}
	}
	// The binding grants the ClusterRole to the ServiceAccount rendered.
	crbs := find(objs, "ClusterRoleBinding")
	crs := find(objs, "ClusterRole")
	if len(crbs) != 1 || len(crs) != 1 {
		t.Fatalf("%d ClusterRoleBindings, %d ClusterRoles; want one each", len(crbs), len(crs))
	}
	crb := decode[rbacv1.ClusterRoleBinding](t, crbs[0])
	if crb.RoleRef.Name != crs[0].GetName() || len(crb.Subjects) != 1 || crb.Subjects[0].Name != sa.Name || crb.Subjects[0].Namespace != sa.Namespace {
		t.Errorf("binding %+v does not grant ClusterRole %s to %s/%s", crb, crs[0].GetName(), sa.Namespace, sa.Name)
	}
}

// TestLintCatchesBadValues: the linter above is not blind: a value the
// schema refuses is an error.
func TestLintCatchesBadValues(t *testing.T) {
	res := lint.RunAll(chartDir, map[string]any{"cni": map[string]any{"mode": "overlay"}}, DefaultNamespace)
	for _, m := range res.Messages {
		if m.Severity == support.ErrorSev && strings.Contains(m.Error(), "mode") {
			return
		}
	}
	t.Fatalf("lint with cni.mode overlay: %v, want an error naming mode", res.Messages)
}
