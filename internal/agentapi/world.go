package agentapi

import (
	"context"
	"net/http"
)

// WorldRequest changes the names the sandbox's simulated world serves:
// Add and Remove are applied to the current set (a name may be a wildcard
// test zone "*.zone").
type WorldRequest struct {
	Add    []string `json:"add,omitempty"`
	Remove []string `json:"remove,omitempty"`
}

// WorldHost is one name of the world and its address.
type WorldHost struct {
	Name string `json:"name"`
	IP   string `json:"ip"`
}

// WorldResponse is the world after the change.
type WorldResponse struct {
	Hosts []WorldHost `json:"hosts"`
}

// WorldBackend is implemented by backends with a simulated world (the
// sandbox); the API answers 404 for /v1/world otherwise.
type WorldBackend interface {
	World(ctx context.Context, req WorldRequest) (WorldResponse, error)
}

// World changes (or, with an empty request, lists) the world's names.
func (c *Client) World(ctx context.Context, req WorldRequest) (WorldResponse, error) {
	var r WorldResponse
	return r, c.do(ctx, http.MethodPost, "/v1/world", req, &r)
}
