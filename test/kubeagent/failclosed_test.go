package kubeagent

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestUnknownPodFailsClosed: a pod whose CNI ADD comes before the agent's
// informer knows it is attached dropping everything; once the pod exists
// in the API server its policy (here: none, so all allowed) is loaded.
func TestUnknownPodFailsClosed(t *testing.T) {
	e := newEnv(t)
	n := e.addNode()
	n.start()
	e.apply(seed("sample-app.yaml"))
	client := n.runPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "client", Namespace: "demo", Labels: map[string]string{"app": "client"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "none"}}}}, 8080)
	early := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "early", Namespace: "demo", Labels: map[string]string{"app": "early"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "none"}}}}
	pd := n.runPodWith(early, false, 8080)
	if err := reach(client, pd, 8080); err == nil {
		t.Fatal("a pod the agent does not know yet accepted a connection")
	}
	if err := reach(pd, client, 8080); err == nil {
		t.Fatal("a pod the agent does not know yet connected out")
	}
	n.publishPod(pd, early)
	expect(t, client, pd, 8080, true)
	expect(t, pd, client, 8080, true)
}
