package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"syscall"
	"time"
)

// ErrNotRunning is returned (wrapped) when no agent listens on the socket.
var ErrNotRunning = errors.New("agent is not running")

// DefaultTimeout bounds each call of a client to the agent.
const DefaultTimeout = 30 * time.Second

// DeadlineHeader carries the client's deadline (RFC 3339, nanoseconds):
// the agent gives up on a request whose client has given up, and never
// commits a change after it (see Server).
const DeadlineHeader = "Bulwark-Deadline"

// Client talks to one agent over its unix socket.
type Client struct {
	socket  string
	timeout time.Duration
	http    *http.Client
}

// NewClient returns a client for the socket at path whose calls each take
// at most DefaultTimeout. It does not connect.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}
	return &Client{socket: path, timeout: DefaultTimeout, http: &http.Client{Transport: tr}}
}

// WithTimeout returns a copy of c whose calls each take at most d (0: no
// bound but the caller's context).
func (c *Client) WithTimeout(d time.Duration) *Client {
	cp := *c
	cp.timeout = d
	return &cp
}

// Socket returns the socket path.
func (c *Client) Socket() string { return c.socket }

// NotRespondingError is a call the agent did not answer within the
// client's timeout: the agent is stopped (SIGSTOP), hung or overloaded. A
// change the agent had not committed by then is never applied; one it had
// is completed and logged as such.
type NotRespondingError struct {
	Socket string
	After  time.Duration
}

func (e *NotRespondingError) Error() string {
	return fmt.Sprintf("agent at %s did not answer within %s; is it stopped? (a change it had not committed by then is not applied; one it had completes, see its log)", e.Socket, e.After)
}

// APIError is a non-2xx answer from the agent.
type APIError struct {
	StatusCode int
	Message    string
}

func (e *APIError) Error() string { return e.Message }

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	callCtx := ctx
	if c.timeout > 0 {
		var cancel context.CancelFunc
		callCtx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(callCtx, method, "http://agent"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if d, ok := callCtx.Deadline(); ok {
		req.Header.Set(DeadlineHeader, d.UTC().Format(time.RFC3339Nano))
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("%w (no agent on %s)", ErrNotRunning, c.socket)
		}
		if errors.Is(err, syscall.EACCES) || errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("%s: permission denied: the agent API is for root only", c.socket)
		}
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return &NotRespondingError{Socket: c.socket, After: c.timeout}
		}
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var eb ErrorBody
		if json.NewDecoder(resp.Body).Decode(&eb) != nil || eb.Error == "" {
			eb.Error = resp.Status
		}
		return &APIError{StatusCode: resp.StatusCode, Message: eb.Error}
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return &NotRespondingError{Socket: c.socket, After: c.timeout}
		}
		return fmt.Errorf("decode answer to %s %s: %w", method, path, err)
	}
	return nil
}

// Status returns the agent's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.do(ctx, http.MethodGet, "/v1/status", nil, &s)
}

// Apply creates or updates the objects of the documents, all or nothing.
func (c *Client) Apply(ctx context.Context, req ApplyRequest) (ApplyResponse, error) {
	var r ApplyResponse
	return r, c.do(ctx, http.MethodPost, "/v1/apply", req, &r)
}

// Delete removes the objects named by the documents, all or nothing.
func (c *Client) Delete(ctx context.Context, req ApplyRequest) (ApplyResponse, error) {
	var r ApplyResponse
	return r, c.do(ctx, http.MethodPost, "/v1/delete", req, &r)
}

// Pods lists the pods.
func (c *Client) Pods(ctx context.Context) ([]Pod, error) {
	var r []Pod
	return r, c.do(ctx, http.MethodGet, "/v1/pods", nil, &r)
}

// Services lists the services.
func (c *Client) Services(ctx context.Context) ([]Service, error) {
	var r []Service
	return r, c.do(ctx, http.MethodGet, "/v1/services", nil, &r)
}

// Policies lists the policies in force.
func (c *Client) Policies(ctx context.Context) ([]Policy, error) {
	var r []Policy
	return r, c.do(ctx, http.MethodGet, "/v1/policies", nil, &r)
}

// Endpoints lists the local endpoints.
func (c *Client) Endpoints(ctx context.Context) ([]Endpoint, error) {
	var r []Endpoint
	return r, c.do(ctx, http.MethodGet, "/v1/endpoints", nil, &r)
}

// Identities lists the identities in use.
func (c *Client) Identities(ctx context.Context) ([]Identity, error) {
	var r []Identity
	return r, c.do(ctx, http.MethodGet, "/v1/identities", nil, &r)
}

// BPFPolicy returns the datapath entries of endpoint id, or of all
// endpoints when id is 0.
func (c *Client) BPFPolicy(ctx context.Context, id uint32) ([]EndpointPolicy, error) {
	path := "/v1/bpf/policy"
	if id != 0 {
		path += "/" + strconv.FormatUint(uint64(id), 10)
	}
	var r []EndpointPolicy
	return r, c.do(ctx, http.MethodGet, path, nil, &r)
}

// Trace explains one connection against the instance's live pods and
// policies.
func (c *Client) Trace(ctx context.Context, req TraceRequest) (TraceResponse, error) {
	var r TraceResponse
	return r, c.do(ctx, http.MethodPost, "/v1/policy/trace", req, &r)
}

// Shutdown asks the agent to stop (and, with Destroy, to remove everything).
// It returns once the agent has accepted; the process exits shortly after.
func (c *Client) Shutdown(ctx context.Context, req ShutdownRequest) error {
	return c.do(ctx, http.MethodPost, "/v1/shutdown", req, nil)
}
