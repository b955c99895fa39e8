package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
)

// Listen binds addr: unix:///path or /path (a socket, mode 0600; a stale
// socket there is replaced, any other file is not) or host:port.
func Listen(addr string) (net.Listener, error) {
	target, err := Target(addr)
	if err != nil {
		return nil, err
	}
	if path, ok := strings.CutPrefix(target, "unix://"); ok {
		return listenUnix(path)
	}
	l, err := net.Listen("tcp", strings.TrimPrefix(target, "passthrough:///"))
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return l, nil
}

func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("listen on %s: exists and is not a socket", path)
		}
		// A socket nobody answers on is stale; one in use is not ours.
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen on %s: another server is listening there", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("listen on %s: remove stale socket: %w", path, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return l, nil
}

// Serve serves the relay's API (and the health service `hubble status`
// checks) on l until ctx ends, then stops every stream and closes l.
func (r *Relay) Serve(ctx context.Context, l net.Listener) error {
	s := grpc.NewServer()
	r.Register(s)
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(l) }()
	select {
	case <-ctx.Done():
		s.Stop()
		<-errc
		return nil
	case err := <-errc:
		if errors.Is(err, grpc.ErrServerStopped) {
			return nil
		}
		return fmt.Errorf("relay: serve on %s: %w", l.Addr(), err)
	}
}

// localBuffer is the in-process connection's buffer.
const localBuffer = 1 << 20

// Local serves the relay in this process, without a listener, and returns
// a client of it: for a command that reads several nodes at once. The
// function returned stops the server and closes the client.
func (r *Relay) Local() (observerpb.ObserverClient, func(), error) {
	l := bufconn.Listen(localBuffer)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.Serve(ctx, l)
	}()
	conn, err := grpc.NewClient("passthrough:///bulwark-relay",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return l.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		cancel()
		<-done
		return nil, nil, fmt.Errorf("relay: in-process client: %w", err)
	}
	stop := func() {
		conn.Close()
		cancel()
		<-done
	}
	return observerpb.NewObserverClient(conn), stop, nil
}
