package agentapi

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// recordingBackend answers from fixed data and records what it was asked:
// it exercises the transport (routing, JSON, errors, socket mode), which is
// all this package owns.
type recordingBackend struct {
	applied  []ApplyRequest
	shutdown []ShutdownRequest
}

func (b *recordingBackend) Status(context.Context) (Status, error) {
	return Status{Instance: "t", Revision: 7, Ready: true}, nil
}
func (b *recordingBackend) Apply(_ context.Context, r ApplyRequest) (ApplyResponse, error) {
	if len(r.Documents) == 0 {
		return ApplyResponse{}, &UserError{errors.New("no documents")}
	}
	b.applied = append(b.applied, r)
	return ApplyResponse{Changes: []ObjectChange{{Kind: "Pod", Name: "a", Action: "created"}}, Revision: 8}, nil
}
func (b *recordingBackend) Delete(context.Context, ApplyRequest) (ApplyResponse, error) {
	return ApplyResponse{}, errors.New("boom")
}
func (b *recordingBackend) Pods(context.Context) ([]Pod, error) {
	return []Pod{{Namespace: "demo", Name: "a", IP: "10.0.0.1"}}, nil
}
func (b *recordingBackend) Services(context.Context) ([]Service, error)    { return nil, nil }
func (b *recordingBackend) Policies(context.Context) ([]Policy, error)     { return nil, nil }
func (b *recordingBackend) Endpoints(context.Context) ([]Endpoint, error)  { return nil, nil }
func (b *recordingBackend) Identities(context.Context) ([]Identity, error) { return nil, nil }
func (b *recordingBackend) BPFPolicy(_ context.Context, id uint32) ([]EndpointPolicy, error) {
	if id == 99 {
		return nil, &NotFoundError{What: "endpoint 99"}
	}
	return []EndpointPolicy{{EndpointID: id}}, nil
}
func (b *recordingBackend) Trace(_ context.Context, r TraceRequest) (TraceResponse, error) {
	if r.Src == "" && r.SrcIdentity == 0 {
		return TraceResponse{}, &UserError{errors.New("no source")}
	}
	return TraceResponse{Text: "trace " + r.Src + " -> " + r.Dst}, nil
}
func (b *recordingBackend) Shutdown(_ context.Context, r ShutdownRequest) error {
	b.shutdown = append(b.shutdown, r)
	return nil
}

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "agent.sock")
	b := &recordingBackend{}
	srv, err := Listen(sock, b)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(func() { srv.Close(context.Background()) })

	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	if _, err := Listen(sock, b); err == nil {
		t.Error("second Listen on a live socket succeeded")
	}

	ctx := context.Background()
	c := NewClient(sock)
	st, err := c.Status(ctx)
	if err != nil || st.Revision != 7 || !st.Ready {
		t.Fatalf("Status = %+v, %v", st, err)
	}
	resp, err := c.Apply(ctx, ApplyRequest{Documents: []Document{{Source: "x.yaml", Data: []byte("kind: Pod")}}})
	if err != nil || resp.Revision != 8 || len(resp.Changes) != 1 {
		t.Fatalf("Apply = %+v, %v", resp, err)
	}
	if string(b.applied[0].Documents[0].Data) != "kind: Pod" {
		t.Errorf("document bytes not carried: %q", b.applied[0].Documents[0].Data)
	}
	var ae *APIError
	if _, err := c.Apply(ctx, ApplyRequest{}); !errors.As(err, &ae) || ae.StatusCode != 400 || ae.Message != "no documents" {
		t.Errorf("Apply(empty) err = %v, want 400 no documents", err)
	}
	if _, err := c.Delete(ctx, ApplyRequest{}); !errors.As(err, &ae) || ae.StatusCode != 500 {
		t.Errorf("Delete err = %v, want 500", err)
	}
	pods, err := c.Pods(ctx)
	if err != nil || len(pods) != 1 || pods[0].IP != "10.0.0.1" {
		t.Errorf("Pods = %+v, %v", pods, err)
	}
	eps, err := c.BPFPolicy(ctx, 12)
	if err != nil || len(eps) != 1 || eps[0].EndpointID != 12 {
		t.Errorf("BPFPolicy(12) = %+v, %v", eps, err)
	}
	if _, err := c.BPFPolicy(ctx, 99); !errors.As(err, &ae) || ae.StatusCode != 404 {
		t.Errorf("BPFPolicy(99) err = %v, want 404", err)
	}
	if tr, err := c.Trace(ctx, TraceRequest{Src: "demo/a", Dst: "demo/b", Port: 80}); err != nil || tr.Text != "trace demo/a -> demo/b" {
		t.Errorf("Trace = %+v, %v", tr, err)
	}
	if _, err := c.Trace(ctx, TraceRequest{Port: 80}); !errors.As(err, &ae) || ae.StatusCode != 400 {
		t.Errorf("Trace without source: %v, want 400", err)
	}
	if err := c.Shutdown(ctx, ShutdownRequest{Destroy: true}); err != nil || len(b.shutdown) != 1 || !b.shutdown[0].Destroy {
		t.Errorf("Shutdown: %v, %+v", err, b.shutdown)
	}
}

func TestNotRunning(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "none.sock"))
	if _, err := c.Status(context.Background()); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("err = %v, want ErrNotRunning", err)
	}
}
