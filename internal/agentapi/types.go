// Package agentapi is the agent's local API: HTTP+JSON over a unix socket
// that only root can open (mode 0600 in a 0700 directory). It holds the wire
// types, the server side routing (Server, given a Backend) and the client the
// CLI uses. The agent implements Backend; nothing here knows about BPF,
// namespaces or policies beyond their printed form.
package agentapi

import (
	"path/filepath"
	"time"
)

// DefaultRunDir is where instances keep their sockets and pid files.
const DefaultRunDir = "/run/bulwark"

// DefaultStateRoot is where instances keep their persistent state.
const DefaultStateRoot = "/var/lib/bulwark"

// SocketPath is the agent socket of an instance under runDir.
func SocketPath(runDir, instance string) string {
	return filepath.Join(runDir, instance, "agent.sock")
}

// MaxRequestBytes bounds the body of a request the agent reads; the
// documents of one apply or delete total at most MaxDocumentsBytes (their
// base64 form fits in MaxRequestBytes). Each object is further bounded by
// manifest.MaxObjectBytes, as in the API server.
const (
	MaxRequestBytes   = 16 << 20
	MaxDocumentsBytes = 12 << 20
)

// Document is one input file's content, sent whole; the agent parses and
// validates it again (it trusts no client).
type Document struct {
	Source string `json:"source"` // file name, for error messages
	Data   []byte `json:"data"`
}

// ApplyRequest carries the documents of an apply or delete.
type ApplyRequest struct {
	Documents []Document `json:"documents"`
}

// ObjectChange reports what happened to one object.
type ObjectChange struct {
	APIVersion string `json:"apiVersion,omitempty"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace,omitempty"`
	Name       string `json:"name"`
	// Action is "created", "configured", "unchanged", "deleted", "not
	// found" or "ignored (why)".
	Action string `json:"action"`
	// Source is where the document came from ("file:doc N").
	Source string `json:"source,omitempty"`
}

// ApplyResponse lists the changes and the policy revision after them.
type ApplyResponse struct {
	Changes  []ObjectChange `json:"changes"`
	Revision uint64         `json:"revision"`
}

// TraceRequest asks the agent to explain one connection between its live
// pods (as "cilium policy trace"): each side a pod ("NS/POD") or an
// identity.
type TraceRequest struct {
	Src         string `json:"src,omitempty"`
	Dst         string `json:"dst,omitempty"`
	SrcIdentity uint32 `json:"srcIdentity,omitempty"`
	DstIdentity uint32 `json:"dstIdentity,omitempty"`
	Port        int    `json:"port"`
	Protocol    string `json:"protocol,omitempty"`
}

// TraceResponse is the explanation, as policy trace prints it.
type TraceResponse struct {
	Text string `json:"text"`
}

// Status is the agent's health and summary.
type Status struct {
	Instance     string    `json:"instance"`
	PID          int       `json:"pid"`
	StartedAt    time.Time `json:"startedAt"`
	StateDir     string    `json:"stateDir"`
	Socket       string    `json:"socket"`
	DatapathMode string    `json:"datapathMode"` // datapath.AttachMode: "tcx", "legacy" (tc clsact), "mixed" or "none"
	// LocalDelivery: pod-to-pod packets are decided at the source's hook
	// and handed to the destination pod directly.
	LocalDelivery bool   `json:"localDelivery"`
	Revision      uint64 `json:"revision"` // policy revision in force
	// Ready: every desired pod runs and every endpoint enforces the
	// current revision.
	Ready       bool     `json:"ready"`
	Pods        int      `json:"pods"`
	PodsReady   int      `json:"podsReady"`
	Services    int      `json:"services"`
	Policies    int      `json:"policies"`
	Endpoints   int      `json:"endpoints"`
	Identities  int      `json:"identities"`
	HubbleAddr  string   `json:"hubbleAddr,omitempty"`
	HubbleSock  string   `json:"hubbleSocket,omitempty"`
	MetricsAddr string   `json:"metricsAddr,omitempty"`
	Errors      []string `json:"errors,omitempty"` // reconcile problems, newest last
	// Flows is the observer's health (nil: no observer).
	Flows *FlowStatus `json:"flows,omitempty"`
	// Namespaces that exist in the instance (sorted): those of its
	// Namespace objects and pods, and default and kube-system, which
	// always exist. policy validate checks policies' namespaces against
	// them, as the API server does.
	Namespaces []string `json:"namespaces,omitempty"`
}

// Pod is one running (or pending) pod.
type Pod struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Labels    map[string]string `json:"labels,omitempty"`
	Ready     bool              `json:"ready"`
	Status    string            `json:"status"` // Pending, Running, Failed
	IP        string            `json:"ip,omitempty"`
	Node      string            `json:"node"`
	Owner     string            `json:"owner,omitempty"` // Deployment/name
	Endpoint  uint32            `json:"endpointID,omitempty"`
	Identity  uint32            `json:"identity,omitempty"`
	Message   string            `json:"message,omitempty"`
	Created   time.Time         `json:"created"`
}

// ServicePort is one port of a service.
type ServicePort struct {
	Name       string `json:"name,omitempty"`
	Port       uint16 `json:"port"`
	TargetPort string `json:"targetPort"`
	Protocol   string `json:"protocol"`
}

// Service is one service.
type Service struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Type      string            `json:"type"`
	ClusterIP string            `json:"clusterIP"`
	Ports     []ServicePort     `json:"ports"`
	Backends  []string          `json:"backends,omitempty"` // ip:port
	Selector  map[string]string `json:"selector,omitempty"`
}

// Policy is one policy document in force.
type Policy struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	// Endpoints is the number of local endpoints it selects.
	Endpoints int `json:"endpoints"`
}

// Endpoint is one local endpoint (a pod's interface under enforcement).
type Endpoint struct {
	ID        uint32   `json:"id"`
	Pod       string   `json:"pod"` // namespace/name
	Identity  uint32   `json:"identity"`
	Labels    []string `json:"labels"`
	IPv4      string   `json:"ipv4,omitempty"`
	IPv6      string   `json:"ipv6,omitempty"`
	Interface string   `json:"interface,omitempty"`
	// Ingress/Egress enforcement: "enabled" (default deny) or "disabled".
	IngressEnforcement string `json:"ingressEnforcement"`
	EgressEnforcement  string `json:"egressEnforcement"`
	Revision           uint64 `json:"policyRevision"`
	Status             string `json:"status"` // ready, not-ready, failed
}

// Identity is one security identity in use.
type Identity struct {
	ID     uint32   `json:"id"`
	Labels []string `json:"labels"`
}

// PolicyEntry is one effective datapath entry of an endpoint.
type PolicyEntry struct {
	Direction string `json:"direction"` // Ingress, Egress
	// Peer is the selector's identities, or "ANY" for every identity.
	Peer       string   `json:"peer"`
	Identities []uint32 `json:"identities,omitempty"`
	Port       string   `json:"port"` // "8080/TCP", "ANY"
	Verdict    string   `json:"verdict"`
	Policies   []string `json:"policies"`
}

// EndpointPolicy is the effective datapath policy of one endpoint.
type EndpointPolicy struct {
	EndpointID         uint32        `json:"endpointID"`
	Pod                string        `json:"pod"`
	Identity           uint32        `json:"identity"`
	Revision           uint64        `json:"revision"`
	IngressEnforcement string        `json:"ingressEnforcement"`
	EgressEnforcement  string        `json:"egressEnforcement"`
	Entries            []PolicyEntry `json:"entries"`
}

// ShutdownRequest stops the agent; with Destroy it also removes the pods,
// the datapath pins and the state.
type ShutdownRequest struct {
	Destroy bool `json:"destroy"`
}

// ErrorBody is the JSON body of every non-2xx answer.
type ErrorBody struct {
	Error string `json:"error"`
}
