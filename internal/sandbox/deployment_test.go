package sandbox

import (
	"net/netip"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestPortKindFor(t *testing.T) {
	cases := []struct {
		port ContainerPort
		want PortKind
	}{
		// UDP always echoes.
		{ContainerPort{Port: 53, Protocol: "UDP"}, PortUDP},
		// Names decide first.
		{ContainerPort{Name: "http-metrics", Port: 5432, Protocol: "TCP"}, PortHTTP},
		{ContainerPort{Name: "grpc", Port: 9090, Protocol: "TCP"}, PortHTTP},
		{ContainerPort{Name: "postgres", Port: 15432, Protocol: "TCP"}, PortTCP},
		{ContainerPort{Name: "redis", Port: 7000, Protocol: "TCP"}, PortTCP},
		// Then well-known non-HTTP ports.
		{ContainerPort{Port: 5432, Protocol: "TCP"}, PortTCP},
		{ContainerPort{Port: 3306, Protocol: "TCP"}, PortTCP},
		{ContainerPort{Port: 6379, Protocol: "TCP"}, PortTCP},
		{ContainerPort{Port: 9042, Protocol: "TCP"}, PortTCP},
		// Everything else is HTTP.
		{ContainerPort{Port: 80, Protocol: "TCP"}, PortHTTP},
		{ContainerPort{Port: 8080, Protocol: "TCP"}, PortHTTP},
		{ContainerPort{Port: 443, Protocol: "TCP"}, PortHTTP},
	}
	for _, c := range cases {
		if got := PortKindFor(c.port); got != c.want {
			t.Errorf("%+v: %s, want %s", c.port, got, c.want)
		}
	}
}

func deployment(name string, replicas int32, labels map[string]string, port int32) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "demo"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "c", Image: "nginx", Ports: []corev1.ContainerPort{{ContainerPort: port}},
				}}},
			},
		},
	}
}

func TestPodsForDeployment(t *testing.T) {
	d := deployment("frontend", 3, map[string]string{"app": "frontend"}, 80)
	pods, err := PodsForDeployment(d)
	if err != nil {
		t.Fatal(err)
	}
	if len(pods) != 3 {
		t.Fatalf("%d pods, want 3", len(pods))
	}
	re := regexp.MustCompile(`^frontend-([0-9a-f]{10})-[bcdfghjklmnpqrstvwxz2456789]{5}$`)
	names := map[string]bool{}
	for _, p := range pods {
		m := re.FindStringSubmatch(p.Name)
		if m == nil {
			t.Fatalf("name %q not Kubernetes-style", p.Name)
		}
		if p.Labels["pod-template-hash"] != m[1] || p.Labels["app"] != "frontend" || p.OwnerDeployment != "frontend" {
			t.Errorf("pod %s: labels %v owner %q", p.Name, p.Labels, p.OwnerDeployment)
		}
		if len(p.Ports) != 1 || p.Ports[0].Kind != PortHTTP {
			t.Errorf("pod %s ports %+v", p.Name, p.Ports)
		}
		names[p.Name] = true
	}
	if len(names) != 3 {
		t.Fatalf("duplicate names: %v", names)
	}
	// Stable for the same template; different for another.
	again, _ := PodsForDeployment(d)
	if again[0].Name != pods[0].Name {
		t.Errorf("names not stable: %s vs %s", again[0].Name, pods[0].Name)
	}
	d2 := deployment("frontend", 3, map[string]string{"app": "frontend"}, 8080)
	other, _ := PodsForDeployment(d2)
	if other[0].Name == pods[0].Name {
		t.Errorf("changed template kept the name %s", other[0].Name)
	}

	bad := deployment("x", 1, map[string]string{"app": "x"}, 80)
	bad.Spec.Selector.MatchLabels = map[string]string{"app": "y"}
	if _, err := PodsForDeployment(bad); err == nil || !strings.Contains(err.Error(), "spec.selector") {
		t.Errorf("mismatched selector: %v", err)
	}
	bad = deployment("x", 1, map[string]string{"app": "x"}, 70000)
	if _, err := PodsForDeployment(bad); err == nil || !strings.Contains(err.Error(), "containerPort") {
		t.Errorf("bad port: %v", err)
	}
}

func TestServiceSpecFromService(t *testing.T) {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "backend", Namespace: "demo"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "backend"},
			Ports: []corev1.ServicePort{
				{Port: 8080, TargetPort: intstr.FromInt32(8080)},
				{Name: "h", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP},
			},
		},
	}
	spec, err := ServiceSpecFromService(s)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Ports[0].TargetPort != "8080" || spec.Ports[1].TargetPort != "http" {
		t.Errorf("target ports %+v", spec.Ports)
	}
	if err := validateServiceSpec(&spec, mustPrefix("10.96.0.0/24")); err != nil {
		t.Error(err)
	}
	s.Spec.Type = corev1.ServiceTypeNodePort
	if _, err := ServiceSpecFromService(s); err == nil {
		t.Error("NodePort accepted")
	}
	bad := ServiceSpec{Namespace: "demo", Name: "x", ClusterIP: "10.1.2.3", Ports: []ServicePort{{Port: 80}}}
	if err := validateServiceSpec(&bad, mustPrefix("10.96.0.0/24")); err == nil || !strings.Contains(err.Error(), "spec.clusterIP") {
		t.Errorf("clusterIP outside range: %v", err)
	}
}

func TestResolveTargetPort(t *testing.T) {
	pod := PodInfo{Ports: []ContainerPort{{Name: "http", Port: 8080, Protocol: "TCP"}, {Name: "dns", Port: 5353, Protocol: "UDP"}}}
	cases := []struct {
		sp   ServicePort
		want int
		ok   bool
	}{
		{ServicePort{Port: 80, Protocol: "TCP"}, 80, true},
		{ServicePort{Port: 80, Protocol: "TCP", TargetPort: "9000"}, 9000, true},
		{ServicePort{Port: 80, Protocol: "TCP", TargetPort: "http"}, 8080, true},
		{ServicePort{Port: 53, Protocol: "UDP", TargetPort: "dns"}, 5353, true},
		{ServicePort{Port: 53, Protocol: "TCP", TargetPort: "dns"}, 0, false}, // protocol must match
		{ServicePort{Port: 80, Protocol: "TCP", TargetPort: "missing"}, 0, false},
	}
	for _, c := range cases {
		got, ok := resolveTargetPort(c.sp, pod)
		if got != c.want || ok != c.ok {
			t.Errorf("%+v: %d %v, want %d %v", c.sp, got, ok, c.want, c.ok)
		}
	}
}

func TestChooseRangesDisjoint(t *testing.T) {
	var others []*State
	for _, inst := range []string{"default", "a", "b", "c"} {
		st, err := chooseRanges(Options{Instance: inst}, others)
		if err != nil {
			t.Fatal(err)
		}
		st.Instance = inst
		for _, o := range others {
			if st.PodCIDR.Overlaps(o.PodCIDR) || st.ServiceCIDR.Overlaps(o.ServiceCIDR) || st.WorldCIDR.Overlaps(o.WorldCIDR) {
				t.Fatalf("%s overlaps %s", inst, o.Instance)
			}
		}
		others = append(others, &st)
	}
	if others[0].ServiceCIDR.String() != "10.96.0.0/24" || others[0].PodCIDR.String() != "10.244.0.0/24" {
		t.Errorf("default instance ranges %v %v", others[0].PodCIDR, others[0].ServiceCIDR)
	}
	// An explicit overlapping range is an error, not a silent move.
	if _, err := chooseRanges(Options{Instance: "d", PodCIDR: others[1].PodCIDR}, others); err == nil {
		t.Error("overlapping explicit PodCIDR accepted")
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
