package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Hubble over TLS (up --hubble-tls): the TCP listener requires a client
// certificate signed by the instance's own CA, so only who can read the
// client key (root: the files are 0600 in the 0700 state directory) reads
// flows; the unix socket is root-only already. The stock hubble CLI
// connects with the flags HubbleTLSFiles.Flags prints.

// HubbleTLSFiles are an instance's Hubble TLS files.
type HubbleTLSFiles struct {
	Dir                       string
	CA, ServerCert, ServerKey string
	ClientCert, ClientKey     string
	ServerName                string // the name in the server certificate
}

// HubbleTLS returns where an instance keeps its Hubble TLS files.
func (p Paths) HubbleTLS() HubbleTLSFiles {
	dir := filepath.Join(p.StateDir, "hubble-tls")
	return HubbleTLSFiles{
		Dir: dir, CA: filepath.Join(dir, "ca.crt"),
		ServerCert: filepath.Join(dir, "server.crt"), ServerKey: filepath.Join(dir, "server.key"),
		ClientCert: filepath.Join(dir, "client.crt"), ClientKey: filepath.Join(dir, "client.key"),
		ServerName: p.Instance + ".hubble-grpc.bulwark.local",
	}
}

// Flags are the stock hubble CLI's flags for these files.
func (f HubbleTLSFiles) Flags() []string {
	return []string{"--tls", "--tls-ca-cert-files", f.CA, "--tls-client-cert-file", f.ClientCert,
		"--tls-client-key-file", f.ClientKey, "--tls-server-name", f.ServerName}
}

// hubbleTLSConfig loads the instance's certificates, creating them on
// first use (a CA, a server and a client certificate, ECDSA P-256, valid
// for ten years: they never leave the machine and 'bulwark down' removes
// them), and returns the server's configuration: TLS 1.3, HTTP/2 by ALPN,
// client certificates required.
func hubbleTLSConfig(f HubbleTLSFiles) (*tls.Config, error) {
	if _, err := os.Stat(f.ClientKey); errors.Is(err, os.ErrNotExist) {
		if err := writeHubbleCerts(f); err != nil {
			return nil, fmt.Errorf("create Hubble TLS certificates in %s: %w", f.Dir, err)
		}
	}
	cert, err := tls.LoadX509KeyPair(f.ServerCert, f.ServerKey)
	if err != nil {
		return nil, fmt.Errorf("Hubble TLS: %w", err)
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("Hubble TLS: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("Hubble TLS: %s holds no certificate", f.CA)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{"h2"},
	}, nil
}

func writeHubbleCerts(f HubbleTLSFiles) error {
	if err := os.MkdirAll(f.Dir, 0o700); err != nil {
		return err
	}
	now := time.Now()
	serial := func() *big.Int {
		n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
		return n
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "bulwark hubble CA " + f.ServerName},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	issue := func(cn string, usage x509.ExtKeyUsage, dns []string, ips []net.IP, certFile, keyFile string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: serial(), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			DNSNames: dns, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return err
		}
		if err := writeFileAtomic(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})); err != nil {
			return err
		}
		return writeFileAtomic(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}))
	}
	if err := issue(f.ServerName, x509.ExtKeyUsageServerAuth, []string{f.ServerName, "localhost"},
		[]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, f.ServerCert, f.ServerKey); err != nil {
		return err
	}
	if err := writeFileAtomic(f.CA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})); err != nil {
		return err
	}
	// The client key last: its presence says the set is complete.
	return issue("hubble client", x509.ExtKeyUsageClientAuth, nil, nil, f.ClientCert, f.ClientKey)
}
