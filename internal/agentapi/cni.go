package agentapi

import (
	"context"
	"net/http"
)

// The CNI contract: the bulwark-cni plugin (run by the container runtime)
// asks the node's agent to attach, check and release a pod's endpoint. The
// agent in Kubernetes mode implements CNIBackend; the sandbox agent does not
// (those routes then answer 404).
//
// Fail closed: EndpointAdd returns only once the endpoint is attached to
// the datapath, and the endpoint drops every packet until its policy is
// loaded; the answer says whether the policy was already loaded
// (PolicyLoaded). An error leaves nothing attached.

// CNIEndpointRequest identifies one pod's interface, as the runtime gave it
// to the plugin.
type CNIEndpointRequest struct {
	ContainerID  string `json:"containerID"`
	Netns        string `json:"netns,omitempty"`  // path of the pod's network namespace
	IfName       string `json:"ifName,omitempty"` // the interface inside the pod (eth0)
	PodNamespace string `json:"podNamespace"`
	PodName      string `json:"podName"`
	PodUID       string `json:"podUID,omitempty"`
	// HostIfName / HostIfIndex: the host-side veth, in the agent's
	// network namespace, where the datapath attaches.
	HostIfName  string `json:"hostIfName,omitempty"`
	HostIfIndex int    `json:"hostIfIndex,omitempty"`
	// IPs are the pod's addresses (CIDR form, as in the CNI result).
	IPs []string `json:"ips,omitempty"`
}

// CNIEndpointResponse describes the attached endpoint.
type CNIEndpointResponse struct {
	EndpointID   uint32 `json:"endpointID"`
	Identity     uint32 `json:"identity"`
	PolicyLoaded bool   `json:"policyLoaded"`
}

// CNIStatusResponse answers the CNI STATUS verb: whether the agent is ready
// to attach pods.
type CNIStatusResponse struct {
	Ready  bool   `json:"ready"`
	Reason string `json:"reason,omitempty"`
}

// CNIBackend is implemented by an agent that serves a CNI plugin.
type CNIBackend interface {
	EndpointAdd(ctx context.Context, req CNIEndpointRequest) (CNIEndpointResponse, error)
	// EndpointDel releases the endpoint; releasing one that does not
	// exist succeeds (CNI DEL is idempotent).
	EndpointDel(ctx context.Context, req CNIEndpointRequest) error
	// EndpointCheck fails when the endpoint is not attached as requested.
	EndpointCheck(ctx context.Context, req CNIEndpointRequest) error
	CNIStatus(ctx context.Context) (CNIStatusResponse, error)
}

func cniRoutes(b Backend, post func(path string, body func() any, f func(ctx context.Context, body any) (any, error)), get func(path string, f func(ctx context.Context, r *http.Request) (any, error))) {
	cb, ok := b.(CNIBackend)
	if !ok {
		return
	}
	post("/v1/cni/add", func() any { return &CNIEndpointRequest{} }, func(ctx context.Context, v any) (any, error) {
		return cb.EndpointAdd(ctx, *v.(*CNIEndpointRequest))
	})
	post("/v1/cni/del", func() any { return &CNIEndpointRequest{} }, func(ctx context.Context, v any) (any, error) {
		return struct{}{}, cb.EndpointDel(ctx, *v.(*CNIEndpointRequest))
	})
	post("/v1/cni/check", func() any { return &CNIEndpointRequest{} }, func(ctx context.Context, v any) (any, error) {
		return struct{}{}, cb.EndpointCheck(ctx, *v.(*CNIEndpointRequest))
	})
	get("/v1/cni/status", func(ctx context.Context, _ *http.Request) (any, error) { return cb.CNIStatus(ctx) })
}

// EndpointAdd asks the agent to attach a pod's endpoint (CNI ADD).
func (c *Client) EndpointAdd(ctx context.Context, req CNIEndpointRequest) (CNIEndpointResponse, error) {
	var r CNIEndpointResponse
	return r, c.do(ctx, http.MethodPost, "/v1/cni/add", req, &r)
}

// EndpointDel asks the agent to release a pod's endpoint (CNI DEL).
func (c *Client) EndpointDel(ctx context.Context, req CNIEndpointRequest) error {
	return c.do(ctx, http.MethodPost, "/v1/cni/del", req, nil)
}

// EndpointCheck asks the agent whether a pod's endpoint is attached (CNI CHECK).
func (c *Client) EndpointCheck(ctx context.Context, req CNIEndpointRequest) error {
	return c.do(ctx, http.MethodPost, "/v1/cni/check", req, nil)
}

// CNIStatus asks whether the agent is ready to attach pods (CNI STATUS).
func (c *Client) CNIStatus(ctx context.Context) (CNIStatusResponse, error) {
	var r CNIStatusResponse
	return r, c.do(ctx, http.MethodGet, "/v1/cni/status", nil, &r)
}
