// Package socklb owns socket-level service translation: cgroup v2 sock_addr
// programs (bpf/sock/socklb.c) that rewrite a ClusterIP:port to a backend
// pod address inside connect/sendmsg and undo it in recvmsg/getpeername.
//
// Maps and links are pinned under a caller-chosen bpffs directory, so the
// translation keeps working while no process holds the objects (for example
// across an agent restart) and is removed only by Remove.
package socklb

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Protocol numbers as in the IP header.
const (
	TCP uint8 = 6
	UDP uint8 = 17
)

// Service is one frontend (ClusterIP, port, protocol) and its backends.
// An empty Backends list removes the translation: the socket keeps the
// ClusterIP destination, which no route leads to.
type Service struct {
	Frontend netip.AddrPort
	Proto    uint8
	Backends []netip.AddrPort
}

// Options says where the programs attach and where their state is pinned.
type Options struct {
	// CgroupPath is a cgroup v2 directory; every process below it is translated.
	CgroupPath string
	// PinDir is a directory on a bpffs mount, owned by this package.
	PinDir string
}

// LB is a loaded, attached set of translation programs.
type LB struct {
	objs socklbObjects
}

var hooks = []struct {
	name   string
	attach ebpf.AttachType
	prog   func(*socklbPrograms) *ebpf.Program
}{
	{"connect4", ebpf.AttachCGroupInet4Connect, func(p *socklbPrograms) *ebpf.Program { return p.SockConnect4 }},
	{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, func(p *socklbPrograms) *ebpf.Program { return p.SockSendmsg4 }},
	{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, func(p *socklbPrograms) *ebpf.Program { return p.SockRecvmsg4 }},
	{"getpeername4", ebpf.AttachCgroupInet4GetPeername, func(p *socklbPrograms) *ebpf.Program { return p.SockGetpeername4 }},
	{"connect6", ebpf.AttachCGroupInet6Connect, func(p *socklbPrograms) *ebpf.Program { return p.SockConnect6 }},
	{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, func(p *socklbPrograms) *ebpf.Program { return p.SockSendmsg6 }},
	{"recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, func(p *socklbPrograms) *ebpf.Program { return p.SockRecvmsg6 }},
	{"getpeername6", ebpf.AttachCgroupInet6GetPeername, func(p *socklbPrograms) *ebpf.Program { return p.SockGetpeername6 }},
}

// Load loads the programs, reusing maps already pinned in opts.PinDir, and
// makes sure each hook of opts.CgroupPath runs the new program through a
// pinned link (an existing pinned link is updated in place, so translation
// has no gap).
func Load(opts Options) (*LB, error) {
	if opts.CgroupPath == "" || opts.PinDir == "" {
		return nil, errors.New("socklb: CgroupPath and PinDir are required")
	}
	if err := os.MkdirAll(opts.PinDir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin dir: %w", err)
	}
	spec, err := loadSocklb()
	if err != nil {
		return nil, fmt.Errorf("load spec: %w", err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinByName
	}
	lb := &LB{}
	if err := spec.LoadAndAssign(&lb.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: opts.PinDir}}); err != nil {
		return nil, fmt.Errorf("load programs: %w", err)
	}
	for _, h := range hooks {
		if err := attachPinned(opts, h.name, h.attach, h.prog(&lb.objs.socklbPrograms)); err != nil {
			lb.objs.Close()
			return nil, err
		}
	}
	return lb, nil
}

func attachPinned(opts Options, name string, attach ebpf.AttachType, prog *ebpf.Program) error {
	pin := filepath.Join(opts.PinDir, "link_"+name)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		uerr := l.Update(prog)
		l.Close()
		if uerr == nil {
			return nil
		}
		// A link that cannot be updated (e.g. its cgroup is gone) is replaced.
		if err := os.Remove(pin); err != nil {
			return fmt.Errorf("replace pinned link %s: %w", name, err)
		}
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: opts.CgroupPath, Attach: attach, Program: prog})
	if err != nil {
		return fmt.Errorf("attach %s to %s: %w", name, opts.CgroupPath, err)
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin link %s: %w", name, err)
	}
	return nil
}

// Close releases this process's handles; pinned links and maps stay.
func (lb *LB) Close() error { return lb.objs.Close() }

// Remove detaches the programs and deletes every pin under pinDir.
// Pinned links are detached explicitly first: dropping a pin alone detaches
// only after an RCU grace period, and callers expect translation to have
// stopped when Remove returns. Removing a directory that does not exist is
// not an error.
func Remove(pinDir string) error {
	var errs []error
	for _, h := range hooks {
		l, err := link.LoadPinnedLink(filepath.Join(pinDir, "link_"+h.name), nil)
		if err != nil {
			continue // not pinned (or already gone)
		}
		if err := l.Detach(); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("detach %s: %w", h.name, err))
		}
		l.Close()
	}
	if err := os.RemoveAll(pinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove pins %s: %w", pinDir, err))
	}
	return errors.Join(errs...)
}

func addr16(a netip.Addr) [16]uint8 { return a.Unmap().As16() }

func key(s Service) socklbSvcKey {
	return socklbSvcKey{Addr: addr16(s.Frontend.Addr()), Port: htons(s.Frontend.Port()), Proto: s.Proto}
}

func htons(p uint16) uint16 { return p<<8 | p>>8 }

func validate(s Service) error {
	if !s.Frontend.IsValid() || s.Frontend.Port() == 0 {
		return fmt.Errorf("service frontend %v: need an address and a port", s.Frontend)
	}
	if s.Proto != TCP && s.Proto != UDP {
		return fmt.Errorf("service %v: protocol %d is not TCP or UDP", s.Frontend, s.Proto)
	}
	fv4 := s.Frontend.Addr().Unmap().Is4()
	for _, b := range s.Backends {
		if !b.IsValid() || b.Port() == 0 {
			return fmt.Errorf("service %v: backend %v needs an address and a port", s.Frontend, b)
		}
		if b.Addr().Unmap().Is4() != fv4 {
			return fmt.Errorf("service %v: backend %v is of another address family", s.Frontend, b)
		}
	}
	return nil
}

// SetServices makes the maps hold exactly svcs. Every service is validated
// before any map is touched. Per service, backend slots are written before
// the count is raised and the count is lowered before slots are deleted.
func (lb *LB) SetServices(svcs []Service) error {
	want := map[socklbSvcKey]Service{}
	for _, s := range svcs {
		if err := validate(s); err != nil {
			return err
		}
		k := key(s)
		if _, dup := want[k]; dup {
			return fmt.Errorf("service %v/%d listed twice", s.Frontend, s.Proto)
		}
		want[k] = s
	}
	for k, s := range want {
		for i, b := range s.Backends {
			bk := socklbBackendKey{Svc: k, Slot: uint32(i)}
			bv := socklbBackendValue{Addr: addr16(b.Addr()), Port: htons(b.Port())}
			if err := lb.objs.Backends.Put(&bk, &bv); err != nil {
				return fmt.Errorf("write backend %v of %v: %w", b, s.Frontend, err)
			}
		}
		if len(s.Backends) == 0 {
			if err := lb.objs.Services.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete service %v: %w", s.Frontend, err)
			}
			continue
		}
		sv := socklbSvcValue{Count: uint32(len(s.Backends))}
		if err := lb.objs.Services.Put(&k, &sv); err != nil {
			return fmt.Errorf("write service %v: %w", s.Frontend, err)
		}
	}
	// Services no longer wanted.
	var k socklbSvcKey
	var v socklbSvcValue
	var stale []socklbSvcKey
	it := lb.objs.Services.Iterate()
	for it.Next(&k, &v) {
		if _, ok := want[k]; !ok {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate services: %w", err)
	}
	for _, k := range stale {
		if err := lb.objs.Services.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete service: %w", err)
		}
	}
	// Backend slots beyond their service's count.
	var bk socklbBackendKey
	var bv socklbBackendValue
	var extra []socklbBackendKey
	bit := lb.objs.Backends.Iterate()
	for bit.Next(&bk, &bv) {
		s, ok := want[bk.Svc]
		if !ok || int(bk.Slot) >= len(s.Backends) {
			extra = append(extra, bk)
		}
	}
	if err := bit.Err(); err != nil {
		return fmt.Errorf("iterate backends: %w", err)
	}
	for _, bk := range extra {
		if err := lb.objs.Backends.Delete(&bk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete backend: %w", err)
		}
	}
	return nil
}

// Services reads the translation table back from the maps.
func (lb *LB) Services() ([]Service, error) {
	var out []Service
	var k socklbSvcKey
	var v socklbSvcValue
	it := lb.objs.Services.Iterate()
	for it.Next(&k, &v) {
		s := Service{
			Frontend: netip.AddrPortFrom(netip.AddrFrom16(k.Addr).Unmap(), htons(k.Port)),
			Proto:    k.Proto,
		}
		for i := uint32(0); i < v.Count; i++ {
			var bv socklbBackendValue
			if err := lb.objs.Backends.Lookup(&socklbBackendKey{Svc: k, Slot: i}, &bv); err != nil {
				return nil, fmt.Errorf("read backend %d of %v: %w", i, s.Frontend, err)
			}
			s.Backends = append(s.Backends, netip.AddrPortFrom(netip.AddrFrom16(bv.Addr).Unmap(), htons(bv.Port)))
		}
		out = append(out, s)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate services: %w", err)
	}
	return out, nil
}
