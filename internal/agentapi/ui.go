package agentapi

import (
	"context"
	"net/http"
)

// UIResponse tells where the agent serves its service map.
type UIResponse struct {
	// URL is the page's address on loopback, e.g. http://127.0.0.1:40123/.
	URL string `json:"url"`
}

// UIBackend is an optional part of Backend: an agent that can serve the
// service map. StartUI starts the page's server on first use and returns
// its address every time.
type UIBackend interface {
	StartUI(ctx context.Context) (UIResponse, error)
}

// StartUI asks the agent to serve its service map and returns the address.
func (c *Client) StartUI(ctx context.Context) (UIResponse, error) {
	var r UIResponse
	return r, c.do(ctx, http.MethodPost, "/v1/ui", struct{}{}, &r)
}
