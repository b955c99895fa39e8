package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"testing"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/bulwark-net/bulwark/internal/observer"
)

// With --hubble-tls the Hubble TCP listener answers a client holding the
// instance's client certificate, and refuses one without it; the files
// are root only and survive a restart unchanged.
func TestHubbleTLS(t *testing.T) {
	p := testListenPaths(t)
	on := true
	addr := "127.0.0.1:0"
	cfg, err := wantedListenConfig(p, Options{HubbleAddr: &addr, MetricsAddr: &addr, HubbleTLS: &on})
	if err != nil {
		t.Fatal(err)
	}
	lns, err := bindListeners(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer lns.close()
	obs, err := observer.New(observer.Options{NodeName: "t"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := observer.NewServer(observer.ServerOptions{Observer: obs, Listeners: []net.Listener{lns.hubbleTCP}})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	files := p.HubbleTLS()
	for _, f := range []string{files.CA, files.ClientCert, files.ClientKey, files.ServerKey} {
		fi, err := os.Stat(f)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want 0600", f, err, fi.Mode())
		}
	}
	caPEM, _ := os.ReadFile(files.CA)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	call := func(withCert bool) error {
		tc := &tls.Config{RootCAs: pool, ServerName: files.ServerName}
		if withCert {
			cert, err := tls.LoadX509KeyPair(files.ClientCert, files.ClientKey)
			if err != nil {
				t.Fatal(err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		conn, err := grpc.NewClient("passthrough:///"+lns.hubbleTCP.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = observerpb.NewObserverClient(conn).ServerStatus(ctx, &observerpb.ServerStatusRequest{})
		return err
	}
	if err := call(true); err != nil {
		t.Errorf("client with the instance's certificate: %v", err)
	}
	if err := call(false); err == nil {
		t.Error("client without a certificate was answered")
	}
	// A restart keeps the certificates (the CLI's flags stay valid).
	before, _ := os.ReadFile(files.ClientCert)
	if _, err := hubbleTLSConfig(files); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(files.ClientCert); string(after) != string(before) {
		t.Error("client certificate replaced on restart")
	}
}
