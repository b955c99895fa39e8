package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"

	mdns "github.com/miekg/dns"

	"github.com/bulwark-net/bulwark/internal/proxy"
	dnsproxy "github.com/bulwark-net/bulwark/internal/proxy/dns"
	"github.com/bulwark-net/bulwark/internal/proxy/tproxy"
)

// dnsServer is the DNS proxy on its transparent sockets: UDP (the
// tproxy UDP helper, answers sent from the original server's address) and
// TCP on the same port number, so that one proxy port serves a rule on
// port 53 of either protocol (or ANY).
type dnsServer struct {
	log   *slog.Logger
	p     *dnsproxy.Proxy
	udp   *tproxy.UDP
	tcp   *tproxy.Listener
	port  uint16
	stop  context.CancelFunc
	wg    sync.WaitGroup
	error error
}

// startDNS opens the DNS proxy's sockets and serves them. Upstream
// queries go through the proxies' dialer (as the pod's identity, so the
// server's ingress policy still applies); answers are released after
// learn returned (the FQDN hook).
func startDNS(log *slog.Logger, l *l7Proxies, o l7Options, noIPv6 bool) (*dnsServer, error) {
	s := &dnsServer{log: log}
	var err error
	if s.udp, err = tproxy.ListenUDP(tproxy.Options{NetNS: o.NodeNetns, Identities: l.policies.identity, NoIPv6: noIPv6}); err != nil {
		return nil, fmt.Errorf("DNS proxy: %w", err)
	}
	s.port = s.udp.Port()
	if s.tcp, err = tproxy.Listen(tproxy.Options{NetNS: o.NodeNetns, Identities: l.policies.identity, NoIPv6: noIPv6, Port: s.port}); err != nil {
		s.udp.Close()
		return nil, fmt.Errorf("DNS proxy TCP on port %d: %w", s.port, err)
	}
	var met *dnsproxy.Metrics
	if o.Registerer != nil {
		if met, err = dnsproxy.NewMetrics(o.Registerer); err != nil {
			log.Warn("DNS proxy metrics", "err", err)
		}
	}
	s.p, err = dnsproxy.New(dnsproxy.Options{
		Policies: l.policies, Upstream: dnsproxy.DialerUpstream{Dialer: l.dialer},
		Learn: o.Learn, Record: o.Record, DeniedRcode: o.DNSDeniedRcode, Metrics: met,
	})
	if err != nil {
		s.udp.Close()
		s.tcp.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	for _, sock := range s.udp.Sockets() {
		s.wg.Add(1)
		go s.serveUDP(ctx, sock)
	}
	s.wg.Add(1)
	go s.serveTCP(ctx)
	log.Info("DNS proxy listening", "port", s.port)
	return s, nil
}

func (s *dnsServer) serveUDP(ctx context.Context, sock *tproxy.UDPSocket) {
	defer s.wg.Done()
	buf := make([]byte, 65535)
	for {
		n, f, err := sock.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) && ctx.Err() == nil {
				s.log.Info("DNS proxy stops reading", "err", err)
			}
			return
		}
		b := append([]byte(nil), buf[:n]...)
		s.wg.Add(1)
		go func(f proxy.Flow) {
			defer s.wg.Done()
			if out, ok := s.p.HandleDatagram(ctx, f, b); ok {
				if err := sock.Reply(out, f); err != nil {
					s.log.Debug("DNS reply", "err", err)
				}
			}
		}(f)
	}
}

func (s *dnsServer) serveTCP(ctx context.Context) {
	defer s.wg.Done()
	for {
		c, f, err := s.tcp.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.p.ServeConn(ctx, c, f)
		}()
	}
}

// dnsRejectRcode maps a --dns-reject-response value to its rcode ("":
// REFUSED).
func dnsRejectRcode(v string) (int, error) {
	switch strings.ToLower(v) {
	case "", "refused":
		return mdns.RcodeRefused, nil
	case "nxdomain", "nameerror":
		return mdns.RcodeNameError, nil
	}
	return 0, fmt.Errorf("dns reject response %q: refused or nxdomain", v)
}

func (s *dnsServer) close() {
	if s == nil {
		return
	}
	s.udp.Close()
	s.tcp.Close()
	s.stop()
	s.wg.Wait()
}
