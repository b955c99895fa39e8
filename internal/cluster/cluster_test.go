package cluster

import (
	"bytes"
	"io"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/bulwark-net/bulwark/internal/cluster/image"
)

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"default", "a", "t1234567abc", "x-1"} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Default", "-a", "a-", "toolongname1", "a_b", "a/b"} {
		if err := ValidateName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestOptionsDefaultsRejectBadInput(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{Name: "ok", Nodes: -1}, "--nodes -1"},
		{Options{Name: "ok", Nodes: 51}, "--nodes 51"},
		{Options{Name: "ok", CNI: "flannel"}, `--cni "flannel"`},
		{Options{Name: "ok", CNI: CNIBulwark, Agents: "pods"}, `--agents "pods"`},
		{Options{Name: "ok", CNI: CNIPtp, Agents: AgentsProcess}, "--agents process"},
		{Options{Name: "Bad"}, "cluster name"},
		{Options{Name: "ok", Manifests: []string{"/nonexistent/app.yaml"}}, "-f /nonexistent/app.yaml"},
	} {
		err := tc.o.defaults()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err %v, want %q", tc.o, err, tc.want)
		}
	}
}

func TestDNSIP(t *testing.T) {
	if got := dnsIP(netip.MustParsePrefix("10.96.0.0/16")); got != netip.MustParseAddr("10.96.0.10") {
		t.Errorf("dnsIP = %s", got)
	}
}

func TestUnescape(t *testing.T) {
	if got := unescape(`/var/lib/a\040b`); got != "/var/lib/a b" {
		t.Errorf("unescape = %q", got)
	}
}

// TestAgentManifest: the shipped manifests adapted to a one-machine
// cluster keep every object, and the DaemonSet runs the local image with
// each node's own instance, directories and cgroup root, and no host path
// a node would share with another.
func TestAgentManifest(t *testing.T) {
	m, err := agentManifest("tc", "chained", netip.MustParseAddrPort("172.30.0.2:6443"), "/sys/fs/cgroup/unified/bulwark-cluster-tc")
	if err != nil {
		t.Fatal(err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(m), 4096)
	kinds := map[string]int{}
	var ds appsv1.DaemonSet
	for {
		var raw map[string]any
		if err := dec.Decode(&raw); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		kind, _ := raw["kind"].(string)
		kinds[kind]++
		if kind == "DaemonSet" {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &ds); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, k := range []string{"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"} {
		if kinds[k] == 0 {
			t.Errorf("no %s in the adapted manifests (%v)", k, kinds)
		}
	}
	spec := ds.Spec.Template.Spec
	nodes := filepath.Join(Dir("tc"), "nodes")
	for _, v := range spec.Volumes {
		if v.HostPath == nil {
			continue
		}
		switch v.HostPath.Path {
		case "/run/bulwark", "/var/lib/bulwark", "/etc/cni/net.d", "/opt/cni/bin":
			t.Errorf("volume %s: host path %s is shared by every node of the machine", v.Name, v.HostPath.Path)
		}
	}
	agent := spec.Containers[0]
	for _, want := range []string{
		"--instance=tc-$(NODE_NAME)",
		"--run-dir=" + nodes + "/$(NODE_NAME)/bulwark-run",
		"--state-root=" + nodes + "/$(NODE_NAME)/bulwark-state",
		"--cni-conf=" + nodes + "/$(NODE_NAME)/cni/net.d/05-bulwark.conflist",
		"--cni-mode=chained", "--native-routing=true",
		"--cgroup-root=/sys/fs/cgroup/unified/bulwark-cluster-tc/$(NODE_NAME)",
		"--kubernetes", "--install-crds=false",
	} {
		if !slices.Contains(agent.Args, want) {
			t.Errorf("agent args lack %s: %v", want, agent.Args)
		}
	}
	if agent.Image != image.Agent || spec.InitContainers[0].Image != image.Agent {
		t.Errorf("images %s, %s; want %s", agent.Image, spec.InitContainers[0].Image, image.Agent)
	}
	if !slices.Contains(spec.InitContainers[0].Command, "--to="+nodes+"/$(NODE_NAME)/cni/bin") {
		t.Errorf("install-cni: %v", spec.InitContainers[0].Command)
	}
	env := map[string]string{}
	for _, e := range agent.Env {
		env[e.Name] = e.Value
	}
	if env["KUBERNETES_SERVICE_HOST"] != "172.30.0.2" || env["KUBERNETES_SERVICE_PORT"] != "6443" {
		t.Errorf("API server env: %v", env)
	}
	for _, c := range append(spec.InitContainers, spec.Containers...) {
		for _, m := range c.VolumeMounts {
			if m.MountPropagation != nil {
				t.Errorf("%s mounts %s with propagation %s (refused on this machine's private mounts)", c.Name, m.MountPath, *m.MountPropagation)
			}
		}
	}
}
