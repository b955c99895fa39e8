package agentapi

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// blockedBackend's Apply waits until released (an agent busy, or stopped,
// while the request sits in its socket), then reports whether its context
// ended: what the agent checks before committing.
type blockedBackend struct {
	recordingBackend
	release chan struct{}
	ctxErr  chan error
}

func (b *blockedBackend) Apply(ctx context.Context, r ApplyRequest) (ApplyResponse, error) {
	<-b.release
	err := Expired(ctx)
	b.ctxErr <- err
	return ApplyResponse{}, err
}

func listenTest(t *testing.T, b Backend) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	srv, err := Listen(sock, b)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Close(ctx)
	})
	return sock
}

// A call the agent does not answer within the client's timeout fails with
// NotRespondingError, and the agent sees the client's deadline as passed
// when it gets to the request: it must not commit it.
func TestClientDeadlineReachesAgent(t *testing.T) {
	b := &blockedBackend{release: make(chan struct{}), ctxErr: make(chan error, 1)}
	sock := listenTest(t, b)
	c := NewClient(sock).WithTimeout(200 * time.Millisecond)
	_, err := c.Apply(context.Background(), ApplyRequest{Documents: []Document{{Source: "x.yaml", Data: []byte("a: b")}}})
	var nr *NotRespondingError
	if !errors.As(err, &nr) || nr.Socket != sock || !strings.Contains(err.Error(), "did not answer within 200ms") {
		t.Fatalf("Apply to a blocked agent: %v; want NotRespondingError naming %s", err, sock)
	}
	close(b.release)
	select {
	case got := <-b.ctxErr:
		if !errors.Is(got, context.DeadlineExceeded) && !errors.Is(got, context.Canceled) {
			t.Errorf("backend's context after the client gave up: %v; want ended", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("backend never ran")
	}
}

// A client's own cancellation is not reported as an unresponsive agent.
func TestClientCancelIsNotTimeout(t *testing.T) {
	b := &blockedBackend{release: make(chan struct{}), ctxErr: make(chan error, 1)}
	sock := listenTest(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := NewClient(sock).Apply(ctx, ApplyRequest{})
	var nr *NotRespondingError
	if err == nil || errors.As(err, &nr) {
		t.Errorf("Apply with the caller's context ending: %v; want a plain context error", err)
	}
	close(b.release)
	<-b.ctxErr
}

// The agent reads at most MaxRequestBytes and says so.
func TestRequestTooLarge(t *testing.T) {
	b := &recordingBackend{}
	sock := listenTest(t, b)
	big := bytes.Repeat([]byte("x"), MaxRequestBytes)
	_, err := NewClient(sock).Apply(context.Background(), ApplyRequest{Documents: []Document{{Source: "big.yaml", Data: big}}})
	var ae *APIError
	if !errors.As(err, &ae) || ae.StatusCode != 400 || !strings.Contains(ae.Message, "larger than 16 MiB") {
		t.Fatalf("Apply of %d bytes: %v; want 400 naming the limit", len(big), err)
	}
	if len(b.applied) != 0 {
		t.Error("backend saw an oversized request")
	}
}
