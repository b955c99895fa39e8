// Package k8stest gives tests a real Kubernetes control plane (etcd and
// kube-apiserver v1.37.2, built by scripts/kube-binaries.sh) instead of a
// fake API server. A test that calls Start is skipped, with the reason,
// when the binaries are missing, except under CI=true where that fails: CI
// builds them first, so a missing binary there is a broken setup, not a
// reason to pass.
package k8stest

import (
	"context"
	"os"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/bulwark-net/bulwark/internal/cluster/controlplane"
)

// Cluster is a running control plane for one test.
type Cluster struct {
	*controlplane.ControlPlane
	Config *rest.Config
	Client kubernetes.Interface
}

// Options tune Start; the zero value starts etcd and kube-apiserver only.
type Options struct {
	// ControllerManager also starts kube-controller-manager (namespace
	// deletion, service accounts, EndpointSlices, node CIDRs).
	ControllerManager bool
}

// Start starts a control plane on loopback for t and stops it when t ends.
func Start(t testing.TB, o ...Options) *Cluster {
	t.Helper()
	var opts Options
	if len(o) > 0 {
		opts = o[0]
	}
	bin := controlplane.DefaultBinDir()
	need := []string{"etcd", "kube-apiserver"}
	if opts.ControllerManager {
		need = append(need, "kube-controller-manager")
	}
	if err := controlplane.CheckBinaries(bin, need...); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cp, err := controlplane.Start(ctx, controlplane.Options{
		BinDir: bin, Dir: t.TempDir(),
		ControllerManager: opts.ControllerManager,
	})
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
	})
	cfg, err := cp.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	// Tests create objects in bursts; client-go's default 5 qps would
	// make them measure the client's rate limiter.
	cfg.QPS, cfg.Burst = 500, 1000
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &Cluster{ControlPlane: cp, Config: cfg, Client: client}
}
