package k8stest

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TestControlPlaneServesTheAPI starts a real control plane and round-trips
// an object through it, with RBAC on (the admin is system:masters).
func TestControlPlaneServesTheAPI(t *testing.T) {
	c := Start(t)
	ctx := context.Background()
	v, err := c.Client.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != "v1.37.2" {
		t.Errorf("server version %s, want v1.37.2", v.GitVersion)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "k8stest", Labels: map[string]string{"team": "a"}}}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := c.Client.CoreV1().Namespaces().Get(ctx, "k8stest", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Labels["team"] != "a" {
		t.Errorf("labels %v", got.Labels)
	}
	// RBAC is on: an unknown user is forbidden.
	cert, key, err := c.PKI.Issue("nobody", "nobody", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc := c.Dir + "/nobody.kubeconfig"
	if err := c.WriteKubeconfig(kc, "nobody", cert, key); err != nil {
		t.Fatal(err)
	}
	cp := *c.ControlPlane
	cp.Kubeconfig = kc
	cfg, err := cp.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	nobody, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = nobody.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("an unknown user listed namespaces: err = %v, want Forbidden", err)
	}
}
