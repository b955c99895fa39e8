package datapath

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads BPF programs")
	}
}

func randSuffix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// openTest opens a datapath with its own pins, destroyed at cleanup.
func openTest(t testing.TB, sizes Sizes) *Datapath {
	t.Helper()
	requireRoot(t)
	dir := "/sys/fs/bpf/bulwark-test-" + randSuffix()
	t.Cleanup(func() { os.RemoveAll(dir) }) // backstop when Open fails half-way
	dp, err := Open(Options{PinDir: dir, Sizes: sizes, ConntrackGCInterval: -1})
	if err != nil {
		t.Fatalf("open datapath: %v", err)
	}
	t.Cleanup(func() {
		if err := dp.Destroy(); err != nil {
			t.Errorf("destroy: %v", err)
		}
	})
	return dp
}

// registerEndpoint writes an endpoint record without attaching programs:
// BPF_PROG_TEST_RUN packets arrive on loopback (ifindex 1).
func registerEndpoint(t testing.TB, dp *Datapath, ep Endpoint) {
	t.Helper()
	dp.mu.Lock()
	defer dp.mu.Unlock()
	es := &endpointState{ep: ep}
	dp.endpoints[ep.ID] = es
	if err := dp.writeEndpointNow(es); err != nil {
		t.Fatal(err)
	}
}

// fixtureSelectors is a test SelectorSet: selector -> identities.
type fixtureSelectors map[resolved.SelectorID][]identity.NumericIdentity

func (f fixtureSelectors) Selects(sel resolved.SelectorID, id identity.NumericIdentity) bool {
	for _, x := range f[sel] {
		if x == id {
			return true
		}
	}
	return false
}

func (f fixtureSelectors) Identities(sel resolved.SelectorID) []identity.NumericIdentity {
	out := append([]identity.NumericIdentity(nil), f[sel]...)
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// packet describes a synthetic frame.
type packet struct {
	src, dst         netip.Addr
	proto            resolved.Protocol
	sport, dport     uint16
	tcpFlags         uint8
	icmpType         uint8
	icmpID           uint16
	ethType          uint16 // set for non-IP frames
	ipv6NextHdrChain []uint8
	quote            []byte // ICMP errors: the quoted packet (IP header on)
	// fragments: offset in 8-byte units (non-zero: no L4 header), more
	// fragments follow, datagram id
	fragOffset uint16
	moreFrags  bool
	fragID     uint32
	ipOptions  []byte // IPv4 options, a multiple of 4 bytes
}

func (p packet) isFragment() bool { return p.fragOffset != 0 || p.moreFrags }

// frame builds Ethernet + IPv4/IPv6 + L4 by hand (checksums are not
// checked by the programs).
func (p packet) frame() []byte {
	eth := make([]byte, 14)
	copy(eth[0:6], []byte{2, 0, 0, 0, 0, 1})
	copy(eth[6:12], []byte{2, 0, 0, 0, 0, 2})
	if p.ethType != 0 {
		binary.BigEndian.PutUint16(eth[12:], p.ethType)
		return append(eth, make([]byte, 46)...)
	}
	var l4 []byte
	switch p.proto {
	case resolved.ProtoTCP:
		l4 = make([]byte, 20)
		binary.BigEndian.PutUint16(l4[0:], p.sport)
		binary.BigEndian.PutUint16(l4[2:], p.dport)
		l4[12] = 5 << 4
		l4[13] = p.tcpFlags
	case resolved.ProtoUDP:
		l4 = make([]byte, 8)
		binary.BigEndian.PutUint16(l4[0:], p.sport)
		binary.BigEndian.PutUint16(l4[2:], p.dport)
		binary.BigEndian.PutUint16(l4[4:], 8)
	case resolved.ProtoSCTP:
		l4 = make([]byte, 12)
		binary.BigEndian.PutUint16(l4[0:], p.sport)
		binary.BigEndian.PutUint16(l4[2:], p.dport)
	case resolved.ProtoICMP, resolved.ProtoICMPv6:
		l4 = make([]byte, 8)
		l4[0] = p.icmpType
		binary.BigEndian.PutUint16(l4[4:], p.icmpID)
	default:
		l4 = make([]byte, 8)
	}
	if p.fragOffset != 0 {
		l4 = nil // a later fragment carries payload only
	}
	if p.quote != nil {
		l4 = append(l4, p.quote...)
	} else {
		l4 = append(l4, make([]byte, 16)...) // payload
	}
	if p.src.Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		ip := make([]byte, 20+len(p.ipOptions))
		ip[0] = 0x40 | byte(len(ip)/4)
		copy(ip[20:], p.ipOptions)
		binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)+len(l4)))
		ip[8] = 64
		ip[9] = uint8(p.proto)
		binary.BigEndian.PutUint16(ip[4:], uint16(p.fragID))
		frag := p.fragOffset
		if p.moreFrags {
			frag |= 0x2000
		}
		binary.BigEndian.PutUint16(ip[6:], frag)
		s, d := p.src.As4(), p.dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		return append(append(eth, ip...), l4...)
	}
	binary.BigEndian.PutUint16(eth[12:], 0x86dd)
	var ext []byte
	next := uint8(p.proto)
	if p.isFragment() {
		h := make([]byte, 8)
		h[0] = next
		off := p.fragOffset << 3
		if p.moreFrags {
			off |= 1
		}
		binary.BigEndian.PutUint16(h[2:], off)
		binary.BigEndian.PutUint32(h[4:], p.fragID)
		ext = h
		next = 44
	}
	// extension headers, innermost last
	for i := len(p.ipv6NextHdrChain) - 1; i >= 0; i-- {
		h := make([]byte, 8)
		h[0] = next
		next = p.ipv6NextHdrChain[i]
		ext = append(h, ext...)
	}
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(ext)+len(l4)))
	ip[6] = next
	ip[7] = 64
	s, d := p.src.As16(), p.dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	return append(append(append(eth, ip...), ext...), l4...)
}

const (
	tcActOK   = 0
	tcActShot = 2
	// tcActRedirect: a packet for the L7 proxy at the destination's own
	// hook, turned back into the interface's ingress (bpf_redirect).
	tcActRedirect = 7
)

// run passes a frame through the program of a direction and returns the tc
// verdict.
func run(t testing.TB, dp *Datapath, dir resolved.Direction, p packet) uint32 {
	t.Helper()
	prog := dp.objs.BulwarkToPod
	if dir == resolved.Egress {
		prog = dp.objs.BulwarkFromPod
	}
	ret, err := prog.Run(&ebpf.RunOptions{Data: p.frame()})
	if err != nil {
		t.Fatalf("prog run: %v", err)
	}
	return ret
}

// nextEvent waits for the next event (deadline only guards a hang).
func nextEvent(t testing.TB, ch <-chan event.Event) (event.Event, bool) {
	t.Helper()
	select {
	case ev, ok := <-ch:
		return ev, ok
	case <-time.After(3 * time.Second):
		return event.Event{}, false
	}
}

// drainEvents returns the events queued until none came for longer than
// the reader's poll deadline (200 ms): traces do not wake the reader.
func drainEvents(ch <-chan event.Event) []event.Event {
	var out []event.Event
	for {
		select {
		case ev := <-ch:
			out = append(out, ev)
		case <-time.After(300 * time.Millisecond):
			return out
		}
	}
}

func eventsOf(t testing.TB, dp *Datapath) <-chan event.Event {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch, err := dp.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ch
}
