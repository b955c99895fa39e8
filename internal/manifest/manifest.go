// Package manifest reads Kubernetes manifests: multi-document YAML (and JSON)
// files and directories, decoded by apiVersion/kind into typed objects
// (k8s.io/api types, and internal/policy/api for the cilium.io/v2 policies),
// with API-server defaulting applied and every object remembering where it
// came from. A Set of decoded objects is the cluster state the policy engine,
// the offline checker and the sandbox read.
//
// Decoding is strict for the kinds we model: an unknown field, a duplicate
// key or a value of the wrong type is an error naming file, document,
// object and field. Kinds we do not model are kept as Unsupported with a
// note, never silently dropped and never an error.
package manifest

import (
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/bulwark-net/bulwark/internal/policy/api"
)

// Source is where a document was read from.
type Source struct {
	File     string `json:"file"` // path as given (joined with the directory walked)
	DocIndex int    `json:"doc"`  // 0-based index among the non-empty documents of File
	Line     int    `json:"line"` // 1-based line where the document's content starts
}

// String is "FILE:doc N".
func (s Source) String() string { return fmt.Sprintf("%s:doc %d", s.File, s.DocIndex) }

// Error is a problem with one document (or one field of it). It prints as
// "FILE:doc N: Kind namespace/name: field.path: reason", leaving out the
// parts that are unknown.
type Error struct {
	Source    Source
	Kind      string
	Namespace string
	Name      string
	Field     string // JSON path, e.g. spec.ingress[0].toPorts[0].ports[0].port
	Reason    string
	// Line is the file line of Field (or of the document), 0 if unknown.
	Line int
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Source.String())
	if obj := ObjectString(e.Kind, e.Namespace, e.Name); obj != "" {
		b.WriteString(": ")
		b.WriteString(obj)
	}
	if e.Field != "" {
		b.WriteString(": ")
		b.WriteString(e.Field)
	}
	b.WriteString(": ")
	b.WriteString(e.Reason)
	return b.String()
}

// ObjectString is "Kind namespace/name" ("Kind name" when cluster-scoped).
func ObjectString(kind, namespace, name string) string {
	ref := name
	if namespace != "" {
		ref = namespace + "/" + name
	}
	switch {
	case kind == "":
		return ref
	case ref == "":
		return kind
	}
	return kind + " " + ref
}

// Errors is the list of document errors of a load; it is an error itself.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unsupported is a document of a kind Bulwark does not model (a
// ServiceMonitor, a ConfigMap, a CiliumEnvoyConfig...). It is kept so tools
// can say what they ignored.
type Unsupported struct {
	APIVersion, Kind, Namespace, Name string
	Note                              string         // why it is not modelled
	Raw                               map[string]any // the document
}

// IsEnvoyConfig reports whether u is a CiliumEnvoyConfig or
// CiliumClusterwideEnvoyConfig (cilium.io), whose rate limit the agent
// enforces: it is parsed and refused field by field, never kept as-is.
func (u *Unsupported) IsEnvoyConfig() bool {
	return envoyConfigKinds[u.Kind] && strings.HasPrefix(u.APIVersion, "cilium.io/")
}

// Object is one decoded document.
type Object struct {
	Source     Source
	APIVersion string
	Kind       string
	Namespace  string // after defaulting; "" for cluster-scoped kinds
	Name       string
	// Obj is one of *corev1.Namespace, *corev1.Pod, *corev1.Service,
	// *appsv1.Deployment, *appsv1.StatefulSet, *appsv1.DaemonSet,
	// *appsv1.ReplicaSet, *networkingv1.NetworkPolicy,
	// *api.CiliumNetworkPolicy, *api.CiliumClusterwideNetworkPolicy or
	// *Unsupported.
	Obj any
	// Warnings are things the decoder changed or ignored (for example a
	// namespace on a cluster-scoped object). Validation reports them.
	Warnings []*Error

	doc       []byte // the document's YAML, for FieldLine
	firstLine int    // file line of doc's first line
}

// String is "FILE:doc N: Kind ns/name".
func (o *Object) String() string {
	return o.Source.String() + ": " + ObjectString(o.Kind, o.Namespace, o.Name)
}

// Set is a collection of decoded objects grouped by kind, in load order.
// Pointers in the typed slices are the same as in Objects, so SourceOf finds
// the source of any of them.
type Set struct {
	Objects []*Object

	Namespaces      []*corev1.Namespace
	Pods            []*corev1.Pod
	Services        []*corev1.Service
	Deployments     []*appsv1.Deployment
	StatefulSets    []*appsv1.StatefulSet
	DaemonSets      []*appsv1.DaemonSet
	ReplicaSets     []*appsv1.ReplicaSet
	NetworkPolicies []*networkingv1.NetworkPolicy
	CNPs            []*api.CiliumNetworkPolicy
	CCNPs           []*api.CiliumClusterwideNetworkPolicy
	Unsupported     []*Unsupported

	byObj map[any]*Object
}

// NewSet returns a Set holding objs.
func NewSet(objs ...*Object) *Set {
	s := &Set{}
	for _, o := range objs {
		s.Add(o)
	}
	return s
}

// Add appends an object to the set and to its kind's slice.
func (s *Set) Add(o *Object) {
	s.Objects = append(s.Objects, o)
	if s.byObj == nil {
		s.byObj = map[any]*Object{}
	}
	s.byObj[o.Obj] = o
	switch v := o.Obj.(type) {
	case *corev1.Namespace:
		s.Namespaces = append(s.Namespaces, v)
	case *corev1.Pod:
		s.Pods = append(s.Pods, v)
	case *corev1.Service:
		s.Services = append(s.Services, v)
	case *appsv1.Deployment:
		s.Deployments = append(s.Deployments, v)
	case *appsv1.StatefulSet:
		s.StatefulSets = append(s.StatefulSets, v)
	case *appsv1.DaemonSet:
		s.DaemonSets = append(s.DaemonSets, v)
	case *appsv1.ReplicaSet:
		s.ReplicaSets = append(s.ReplicaSets, v)
	case *networkingv1.NetworkPolicy:
		s.NetworkPolicies = append(s.NetworkPolicies, v)
	case *api.CiliumNetworkPolicy:
		s.CNPs = append(s.CNPs, v)
	case *api.CiliumClusterwideNetworkPolicy:
		s.CCNPs = append(s.CCNPs, v)
	case *Unsupported:
		s.Unsupported = append(s.Unsupported, v)
	}
}

// Merge adds every object of other to s.
func (s *Set) Merge(other *Set) {
	for _, o := range other.Objects {
		s.Add(o)
	}
}

// ObjectOf returns the Object wrapping a typed object of the set (for
// example a *corev1.Pod from s.Pods), or nil.
func (s *Set) ObjectOf(obj any) *Object {
	return s.byObj[obj]
}

// SourceOf returns where a typed object of the set was read from.
func (s *Set) SourceOf(obj any) (Source, bool) {
	if o := s.byObj[obj]; o != nil {
		return o.Source, true
	}
	return Source{}, false
}

// Namespace returns the declared Namespace object named name, or nil.
func (s *Set) Namespace(name string) *corev1.Namespace {
	for _, n := range s.Namespaces {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Policies returns the cilium.io/v2 policies (CNPs then CCNPs) through
// their common interface.
func (s *Set) Policies() []api.Policy {
	out := make([]api.Policy, 0, len(s.CNPs)+len(s.CCNPs))
	for _, p := range s.CNPs {
		out = append(out, p)
	}
	for _, p := range s.CCNPs {
		out = append(out, p)
	}
	return out
}

// Counts returns the number of objects per kind.
func (s *Set) Counts() map[string]int {
	m := map[string]int{}
	for _, o := range s.Objects {
		m[o.Kind]++
	}
	return m
}
