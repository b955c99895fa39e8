package agent

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
)

// Default listen addresses of a new instance (Cilium's ports). A second
// instance given no flags clashes with the first and fails to start,
// naming the flag that moves it.
const (
	DefaultHubbleListen  = "127.0.0.1:4245"
	DefaultMetricsListen = "127.0.0.1:9962"
)

// listenConfig is where an instance listens, persisted in its state
// directory so that a restarted agent ('bulwark up' without flags) listens
// where it did, and so that the CLI finds the instance's own Hubble socket.
//
// Invariants: the TCP listeners are on loopback (the sandbox serves flows,
// which name pods, IPs, labels and policies, without TLS); an address that
// cannot be bound stops the agent before it touches the sandbox.
type listenConfig struct {
	// HubbleTCP is the Hubble gRPC TCP address ("" = none).
	HubbleTCP string `json:"hubbleListen"`
	// HubbleSocket is the Hubble unix socket (root only).
	HubbleSocket string `json:"hubbleSocket"`
	// Metrics is the Prometheus address ("" = off).
	Metrics string `json:"metricsListen"`
	// HubbleTLS: the TCP listener speaks TLS and requires a client
	// certificate (see hubbleTLSConfig).
	HubbleTLS bool `json:"hubbleTLS,omitempty"`
	// TLSFiles are the instance's certificates (with HubbleTLS).
	TLSFiles HubbleTLSFiles `json:"-"`
}

// ListenFile is where an instance records its listen addresses.
func (p Paths) ListenFile() string { return filepath.Join(p.StateDir, "listen.json") }

// ListenAddrs are an instance's recorded listen addresses, as the CLI reads
// them.
type ListenAddrs struct {
	HubbleTCP    string
	HubbleSocket string
	Metrics      string
	// HubbleTLS: HubbleTCP requires TLS with a client certificate
	// (Paths.HubbleTLS).
	HubbleTLS bool
}

// ReadListenAddrs returns the listen addresses an instance recorded. A
// missing record (an instance that never started) wraps os.ErrNotExist.
func ReadListenAddrs(p Paths) (ListenAddrs, error) {
	c, ok, err := readListenConfig(p)
	if err != nil {
		return ListenAddrs{}, err
	}
	if !ok {
		return ListenAddrs{}, fmt.Errorf("instance %q has no recorded listen addresses (%s): %w", p.Instance, p.ListenFile(), os.ErrNotExist)
	}
	return ListenAddrs{HubbleTCP: c.HubbleTCP, HubbleSocket: c.HubbleSocket, Metrics: c.Metrics, HubbleTLS: c.HubbleTLS}, nil
}

func readListenConfig(p Paths) (listenConfig, bool, error) {
	var c listenConfig
	b, err := os.ReadFile(p.ListenFile())
	if errors.Is(err, os.ErrNotExist) {
		return c, false, nil
	}
	if err != nil {
		return c, false, fmt.Errorf("read listen addresses: %w", err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, false, fmt.Errorf("%s: %w", p.ListenFile(), err)
	}
	return c, true, nil
}

func writeListenConfig(p Paths, c listenConfig) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(p.ListenFile(), append(b, '\n')); err != nil {
		return fmt.Errorf("record listen addresses: %w", err)
	}
	return nil
}

// wantedListenConfig merges the options of this start into the recorded
// configuration: a given address replaces the recorded one; a new instance
// starts from the defaults.
func wantedListenConfig(p Paths, o Options) (listenConfig, error) {
	c, ok, err := readListenConfig(p)
	if err != nil {
		return c, err
	}
	if !ok {
		c = listenConfig{HubbleTCP: DefaultHubbleListen, Metrics: DefaultMetricsListen}
	}
	c.HubbleSocket = p.Hubble
	if o.HubbleAddr != nil {
		c.HubbleTCP = *o.HubbleAddr
	}
	if o.MetricsAddr != nil {
		c.Metrics = *o.MetricsAddr
	}
	if o.HubbleTLS != nil {
		c.HubbleTLS = *o.HubbleTLS
	}
	c.TLSFiles = p.HubbleTLS()
	if err := checkLoopback(c.HubbleTCP, "--hubble-listen"); err != nil {
		return c, err
	}
	if err := checkLoopback(c.Metrics, "--metrics-listen"); err != nil {
		return c, err
	}
	return c, nil
}

// checkLoopback refuses a TCP address off loopback: flows and metrics are
// readable by whoever reaches the port.
func checkLoopback(addr, flag string) error {
	if addr == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s %q: %w", flag, addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("%s %q: the sandbox listens on loopback only (127.0.0.1 or ::1): without TLS anyone reaching the port reads every flow", flag, addr)
	}
	return nil
}

// listeners are an instance's bound listeners, handed to the Hubble and
// metrics servers.
type listeners struct {
	hubbleTCP  net.Listener // nil: none
	hubbleUnix net.Listener
	metrics    net.Listener // nil: off
}

func (l *listeners) close() {
	for _, ln := range []net.Listener{l.hubbleTCP, l.hubbleUnix, l.metrics} {
		if ln != nil {
			ln.Close()
		}
	}
}

// bindListeners binds every address of c, or none: an address in use
// fails with the address and the flag that changes it.
func bindListeners(c listenConfig) (_ *listeners, err error) {
	l := &listeners{}
	defer func() {
		if err != nil {
			l.close()
		}
	}()
	if c.HubbleTCP != "" {
		if l.hubbleTCP, err = listenTCP(c.HubbleTCP, "--hubble-listen", "Hubble API"); err != nil {
			return nil, err
		}
		if c.HubbleTLS {
			cfg, err := hubbleTLSConfig(c.TLSFiles)
			if err != nil {
				return nil, err
			}
			l.hubbleTCP = tls.NewListener(l.hubbleTCP, cfg)
		}
	}
	if c.Metrics != "" {
		if l.metrics, err = listenTCP(c.Metrics, "--metrics-listen", "metrics"); err != nil {
			return nil, err
		}
	}
	if l.hubbleUnix, err = listenUnixRootOnly(c.HubbleSocket); err != nil {
		return nil, fmt.Errorf("Hubble API socket: %w", err)
	}
	return l, nil
}

func listenTCP(addr, flag, what string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		return ln, nil
	}
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("%s: address %s is in use (another instance or program listens there): choose another with %s (for example %s 127.0.0.1:0 for any free port), or '' to turn it off", what, addr, flag, flag)
	}
	return nil, fmt.Errorf("%s: listen on %s (%s): %w", what, addr, flag, err)
}

// listenUnixRootOnly creates the socket mode 0600 in its instance's run
// directory (0700): only root connects, as to the agent API.
func listenUnixRootOnly(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("listen on %s: exists and is not a socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen on %s: another process serves it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restrict %s: %w", path, err)
	}
	return ln, nil
}
