// Package dns is the sandbox's cluster DNS (kube-dns): an authoritative
// server for the names in a records file, answering A/AAAA and NXDOMAIN for
// everything else. It never forwards a query anywhere.
//
// The records file is rewritten atomically by the agent (WriteRecords) and
// reloaded by the server when it changes, so the server keeps answering
// from the last good file while no agent runs.
package dns

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/bulwark-net/bulwark/internal/sandbox/ipam"
)

// Records maps fully qualified names (lower case, trailing dot optional) to
// their addresses.
type Records struct {
	Names map[string][]netip.Addr `json:"names"`
	// Zones are wildcard test zones: every name strictly under a zone
	// (any depth) that Names does not hold resolves to its addresses.
	Zones map[string][]netip.Addr `json:"zones,omitempty"`
}

// TTL of every answer, in seconds: short, because the agent may change them.
const TTL = 5

// WriteRecords atomically replaces file with recs.
func WriteRecords(file string, recs Records) error {
	norm := Records{Names: map[string][]netip.Addr{}}
	for n, ips := range recs.Names {
		norm.Names[Canonical(n)] = append(norm.Names[Canonical(n)], ips...)
	}
	for z, ips := range recs.Zones {
		if norm.Zones == nil {
			norm.Zones = map[string][]netip.Addr{}
		}
		norm.Zones[Canonical(z)] = append(norm.Zones[Canonical(z)], ips...)
	}
	b, err := json.MarshalIndent(norm, "", "  ")
	if err != nil {
		return fmt.Errorf("encode dns records: %w", err)
	}
	return ipam.WriteFileAtomic(file, b)
}

// ReadRecords loads a records file.
func ReadRecords(file string) (Records, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return Records{}, fmt.Errorf("read dns records: %w", err)
	}
	var r Records
	if err := json.Unmarshal(b, &r); err != nil {
		return Records{}, fmt.Errorf("parse dns records %s: %w", file, err)
	}
	out := Records{Names: map[string][]netip.Addr{}, Zones: map[string][]netip.Addr{}}
	for n, ips := range r.Names {
		out.Names[Canonical(n)] = ips
	}
	for z, ips := range r.Zones {
		out.Zones[Canonical(z)] = ips
	}
	return out, nil
}

// Canonical lower-cases a name and adds the trailing dot.
func Canonical(name string) string { return mdns.CanonicalName(name) }

// Server answers from a records file.
type Server struct {
	file string

	mu      sync.RWMutex
	recs    Records
	version fileVersion
}

// fileVersion identifies one content of the records file: WriteRecords
// renames a new file into place, so the inode changes on every write.
type fileVersion struct {
	ino     uint64
	modTime time.Time
	size    int64
}

func versionOf(st os.FileInfo) fileVersion {
	v := fileVersion{modTime: st.ModTime(), size: st.Size()}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		v.ino = sys.Ino
	}
	return v
}

// NewServer loads file (a missing file means no names yet).
func NewServer(file string) *Server {
	s := &Server{file: file, recs: Records{Names: map[string][]netip.Addr{}}}
	s.reload()
	return s
}

// reload re-reads the file if it changed; a file that fails to parse
// leaves the previous records in place. It runs before every answer, so a
// query never sees records older than the last completed WriteRecords.
func (s *Server) reload() {
	st, err := os.Stat(s.file)
	if err != nil {
		return
	}
	v := versionOf(st)
	s.mu.RLock()
	same := v == s.version
	s.mu.RUnlock()
	if same {
		return
	}
	r, err := ReadRecords(s.file)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dns:", err)
		return
	}
	s.mu.Lock()
	s.recs, s.version = r, v
	s.mu.Unlock()
}

// Answer builds the reply to one query.
func (s *Server) Answer(req *mdns.Msg) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	m.RecursionAvailable = false
	if len(req.Question) != 1 {
		m.Rcode = mdns.RcodeFormatError
		return m
	}
	q := req.Question[0]
	s.mu.RLock()
	ips, ok := s.recs.Names[Canonical(q.Name)]
	if !ok {
		ips, ok = zoneOf(s.recs.Zones, Canonical(q.Name))
	}
	s.mu.RUnlock()
	if !ok {
		m.Rcode = mdns.RcodeNameError
		return m
	}
	hdr := mdns.RR_Header{Name: q.Name, Class: mdns.ClassINET, Ttl: TTL}
	for _, ip := range ips {
		switch {
		case ip.Is4() && (q.Qtype == mdns.TypeA || q.Qtype == mdns.TypeANY):
			h := hdr
			h.Rrtype = mdns.TypeA
			m.Answer = append(m.Answer, &mdns.A{Hdr: h, A: net.IP(ip.AsSlice())})
		case ip.Is6() && (q.Qtype == mdns.TypeAAAA || q.Qtype == mdns.TypeANY):
			h := hdr
			h.Rrtype = mdns.TypeAAAA
			m.Answer = append(m.Answer, &mdns.AAAA{Hdr: h, AAAA: net.IP(ip.AsSlice())})
		}
	}
	// A known name without records of the asked type is NOERROR/NODATA.
	return m
}

// zoneOf returns the addresses of the closest wildcard zone strictly
// above name.
func zoneOf(zones map[string][]netip.Addr, name string) ([]netip.Addr, bool) {
	for i := strings.IndexByte(name, '.'); i >= 0 && i+1 < len(name); i = strings.IndexByte(name, '.') {
		name = name[i+1:]
		if ips, ok := zones[name]; ok {
			return ips, true
		}
	}
	return nil, false
}

// ServeDNS implements mdns.Handler.
func (s *Server) ServeDNS(w mdns.ResponseWriter, req *mdns.Msg) {
	s.reload()
	_ = w.WriteMsg(s.Answer(req))
}

// Serve answers on the given UDP and TCP listeners until ctx ends, checking
// the records file for changes every interval.
func (s *Server) Serve(ctx context.Context, udp net.PacketConn, tcp net.Listener, interval time.Duration) error {
	srvs := []*mdns.Server{
		{PacketConn: udp, Handler: s},
		{Listener: tcp, Handler: s},
	}
	errc := make(chan error, len(srvs))
	for _, srv := range srvs {
		go func() { errc <- srv.ActivateAndServe() }()
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			for _, srv := range srvs {
				_ = srv.Shutdown()
			}
			return nil
		case err := <-errc:
			return fmt.Errorf("dns server: %w", err)
		case <-t.C:
			s.reload()
		}
	}
}

// ServiceName returns the name under which a Service is resolvable
// through a pod's search list: the fully qualified
// <svc>.<ns>.svc.<domain>. (the search list supplies the shorter forms).
func ServiceName(service, namespace, domain string) string {
	return Canonical(strings.Join([]string{service, namespace, "svc", domain}, "."))
}

// ResolvConf is the resolv.conf of a pod in namespace.
func ResolvConf(nameserver netip.Addr, namespace, domain string) string {
	return fmt.Sprintf("nameserver %s\nsearch %s.svc.%s svc.%s %s\noptions ndots:5\n",
		nameserver, namespace, domain, domain, domain)
}
