package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

func (dp *Datapath) gcLoop(interval time.Duration) {
	defer close(dp.gcDone)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-dp.gcStop:
			return
		case <-t.C:
			dp.GCConntrack()
		}
	}
}

// GCConntrack deletes expired conntrack entries and entries of interfaces
// that have no endpoint any more; it returns how many it deleted.
func (dp *Datapath) GCConntrack() (int, error) {
	dp.mu.Lock()
	ifaces := map[uint32]bool{}
	for _, es := range dp.endpoints {
		ifaces[uint32(es.ep.IfIndex)] = true
	}
	dp.mu.Unlock()
	now, err := dp.jiffies()
	if err != nil {
		return 0, fmt.Errorf("conntrack gc: %w", err)
	}
	var k bpfBwCtKey
	var v bpfBwCtEntry
	var expired []bpfBwCtKey
	live := 0
	it := dp.objs.BwConntrack.Iterate()
	for it.Next(&k, &v) {
		if v.Expires < now || !ifaces[k.Ifindex] {
			expired = append(expired, k)
		} else {
			live++
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("conntrack gc: %w", err)
	}
	n := 0
	for i := range expired {
		if err := dp.objs.BwConntrack.Delete(&expired[i]); err == nil {
			n++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("conntrack gc: %w", err)
		}
	}
	dp.mu.Lock()
	dp.counts["conntrack"] = live
	dp.mu.Unlock()
	return n, nil
}

// Flow is a conntrack entry, decoded.
type Flow struct {
	IfIndex          uint32
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Proto            resolved.Protocol
	Direction        resolved.Direction // of the original packet
	Verdict          resolved.Verdict
	PeerIdentity     identity.NumericIdentity
	RuleID           uint32
	Revision         uint64
	ExpiresIn        time.Duration
	Closing          bool
}

// Conntrack lists the tracked flows.
func (dp *Datapath) Conntrack() ([]Flow, error) {
	now, err := dp.jiffies()
	if err != nil {
		return nil, err
	}
	var out []Flow
	var k bpfBwCtKey
	var v bpfBwCtEntry
	it := dp.objs.BwConntrack.Iterate()
	for it.Next(&k, &v) {
		// The key is canonical (ends sorted): OrigLo says which end sent
		// the original packet.
		src, dst := netip.AddrFrom16(k.AddrLo), netip.AddrFrom16(k.AddrHi)
		sport, dport := k.PortLo, k.PortHi
		if v.OrigLo == 0 {
			src, dst, sport, dport = dst, src, dport, sport
		}
		if src.Is4In6() {
			src, dst = src.Unmap(), dst.Unmap()
		}
		out = append(out, Flow{
			IfIndex: k.Ifindex, Src: src, Dst: dst, SrcPort: htons(sport), DstPort: htons(dport),
			Proto: resolved.Protocol(k.Proto), Direction: resolved.Direction(v.Dir), Verdict: resolved.Verdict(v.Verdict),
			PeerIdentity: identity.NumericIdentity(v.PeerIdentity), RuleID: v.RuleId, Revision: v.Revision,
			ExpiresIn: dp.jiffiesToDuration(int64(v.Expires) - int64(now)), Closing: v.Closing != 0,
		})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read conntrack: %w", err)
	}
	return out, nil
}

// purgeConntrack deletes the flows tracked on an interface.
func (dp *Datapath) purgeConntrack(ifindex uint32) error {
	var k bpfBwCtKey
	var v bpfBwCtEntry
	var keys []bpfBwCtKey
	it := dp.objs.BwConntrack.Iterate()
	for it.Next(&k, &v) {
		if k.Ifindex == ifindex {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("purge conntrack: %w", err)
	}
	for i := range keys {
		if err := dp.objs.BwConntrack.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("purge conntrack: %w", err)
		}
	}
	return nil
}
