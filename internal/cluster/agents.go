package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/bulwark-net/bulwark/deploy/manifests"
	"github.com/bulwark-net/bulwark/internal/agent"
	"github.com/bulwark-net/bulwark/internal/cluster/image"
)

// Agent modes: how --cni bulwark runs the agents.
const (
	// AgentsDaemonSet applies the shipped manifests (deploy/manifests,
	// the chart's defaults): the agent is a DaemonSet pod on every node,
	// as on a real cluster.
	AgentsDaemonSet = "daemonset"
	// AgentsProcess runs each node's agent as a process in the node's
	// network namespace, beside its kubelet.
	AgentsProcess = "process"
)

// nodesMountDir is the host directory the DaemonSet mounts for every
// node's files: the nodes of one machine share its filesystem, so each
// agent finds its own below <nodes>/$(NODE_NAME).
func nodesMountDir(name string) string { return filepath.Join(Dir(name), "nodes") }

// agentManifest adapts the shipped plain manifests to a one-machine
// cluster and returns them as YAML documents. On a real cluster every node
// has its own /run/bulwark, /var/lib/bulwark, /sys/fs/bpf pins, CNI
// directories and cgroup root; here the nodes share one filesystem, so the
// DaemonSet's host paths become the cluster's per-node directories (the
// same layout as NodeAgentOf, so 'observe --cluster' and 'cluster down'
// find them), chosen per pod with $(NODE_NAME):
//
//   - image: the locally built image.Agent;
//   - the agent's instance <cluster>-<node> (its own pins), run and state
//     roots, CNI configuration file, IPAM directory and cgroup root (the
//     node's, below the cluster's cgroupV2Root);
//   - install-cni copies bulwark-cni into the node's CNI bin directory;
//   - the API server by address (KUBERNETES_SERVICE_HOST), native routing
//     on, the CNI mode of --cni;
//   - no mount propagation (see mounts below).
//
// Everything else (CRDs, RBAC, ConfigMap, probes, privileges) is applied as
// shipped.
func agentManifest(name, cniMode string, apiServer netip.AddrPort, cgroupV2Root string) ([]byte, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifests.Bulwark), 4096)
	var out bytes.Buffer
	found := false
	for i := 1; ; i++ {
		var obj map[string]any
		if err := dec.Decode(&obj); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("deploy/manifests/bulwark.yaml document %d: %w", i, err)
		}
		if obj == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		if u.GetKind() == "DaemonSet" {
			var ds appsv1.DaemonSet
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj, &ds); err != nil {
				return nil, fmt.Errorf("deploy/manifests/bulwark.yaml DaemonSet %s: %w", u.GetName(), err)
			}
			if err := adaptDaemonSet(&ds, name, cniMode, apiServer, cgroupV2Root); err != nil {
				return nil, fmt.Errorf("deploy/manifests/bulwark.yaml DaemonSet %s: %w", u.GetName(), err)
			}
			m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&ds)
			if err != nil {
				return nil, err
			}
			obj = m
			found = true
		}
		b, err := yaml.Marshal(obj)
		if err != nil {
			return nil, err
		}
		out.WriteString("---\n")
		out.Write(b)
	}
	if !found {
		return nil, fmt.Errorf("deploy/manifests/bulwark.yaml has no DaemonSet")
	}
	return out.Bytes(), nil
}

func adaptDaemonSet(ds *appsv1.DaemonSet, name, cniMode string, apiServer netip.AddrPort, cgroupV2Root string) error {
	spec := &ds.Spec.Template.Spec
	nodes := nodesMountDir(name)
	nodeDir := filepath.Join(nodes, "$(NODE_NAME)")
	ag := NodeAgentOf(name, "$(NODE_NAME)")
	nodeNameEnv := corev1.EnvVar{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "spec.nodeName"}}}

	// Volumes: the per-node host directories become the cluster's.
	replaced := map[string]bool{"run": true, "state": true, "cni-conf": true, "cni-bin": true}
	var vols []corev1.Volume
	for _, v := range spec.Volumes {
		if !replaced[v.Name] {
			vols = append(vols, v)
		}
	}
	dir := corev1.HostPathDirectory
	vols = append(vols, corev1.Volume{Name: "cluster-nodes",
		VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: nodes, Type: &dir}}})
	spec.Volumes = vols
	mounts := func(c *corev1.Container) {
		var ms []corev1.VolumeMount
		for _, m := range c.VolumeMounts {
			if replaced[m.Name] {
				continue
			}
			// This machine's mounts are private (no systemd making
			// them shared), and containerd refuses Bidirectional or
			// HostToContainer propagation from a private mount. The
			// agent needs neither here: bpffs and cgroup2 are mounted
			// already, and a plain bind mount shares their pins and
			// cgroups with the host.
			m.MountPropagation = nil
			ms = append(ms, m)
		}
		c.VolumeMounts = append(ms, corev1.VolumeMount{Name: "cluster-nodes", MountPath: nodes})
	}

	if len(spec.InitContainers) != 1 || spec.InitContainers[0].Name != "install-cni" {
		return fmt.Errorf("want one init container install-cni")
	}
	ic := &spec.InitContainers[0]
	ic.Image, ic.ImagePullPolicy = image.Agent, corev1.PullNever
	mounts(ic)
	ic.Env = append(ic.Env, nodeNameEnv)
	setFlags(&ic.Command, map[string]string{"--to": filepath.Join(nodeDir, "cni", "bin")})

	var ac *corev1.Container
	for i := range spec.Containers {
		if spec.Containers[i].Name == "agent" {
			ac = &spec.Containers[i]
		}
	}
	if ac == nil {
		return fmt.Errorf("no container agent")
	}
	ac.Image, ac.ImagePullPolicy = image.Agent, corev1.PullNever
	mounts(ac)
	setFlags(&ac.Args, map[string]string{
		"--instance":       ag.Instance,
		"--run-dir":        ag.RunRoot,
		"--state-root":     ag.StateRoot,
		"--cni-conf":       filepath.Join(nodeDir, "cni", "net.d", agent.ConfListName),
		"--cni-ipam-dir":   filepath.Join(nodeDir, "cni", "ipam"),
		"--cni-mode":       cniMode,
		"--native-routing": "true",
		// The node's pods are below its cgroup root (the host's
		// cgroup2 mount is mounted as shipped): their ClusterIPs are
		// translated at the socket, before the egress policy.
		"--cgroup-root": filepath.Join(cgroupV2Root, "$(NODE_NAME)"),
	})
	var env []corev1.EnvVar
	for _, e := range ac.Env {
		if e.Name != "KUBERNETES_SERVICE_HOST" && e.Name != "KUBERNETES_SERVICE_PORT" {
			env = append(env, e)
		}
	}
	ac.Env = append(env,
		corev1.EnvVar{Name: "KUBERNETES_SERVICE_HOST", Value: apiServer.Addr().String()},
		corev1.EnvVar{Name: "KUBERNETES_SERVICE_PORT", Value: fmt.Sprint(apiServer.Port())})
	return nil
}

// setFlags replaces the values of the named --flag=value arguments in
// args, and appends those args lacks (sorted).
func setFlags(args *[]string, flags map[string]string) {
	done := map[string]bool{}
	for i, a := range *args {
		k, _, ok := strings.Cut(a, "=")
		if v, want := flags[k]; ok && want {
			(*args)[i] = k + "=" + v
			done[k] = true
		}
	}
	keys := make([]string, 0, len(flags))
	for k := range flags {
		if !done[k] {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		*args = append(*args, k+"="+flags[k])
	}
}
