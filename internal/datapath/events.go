package datapath

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// Events streams the datapath's events (ring buffer) and the syncer's
// overflow events until ctx ends; the channel is then closed. One reader at
// a time. Events the kernel could not queue are counted in
// Metrics().EventsLost.
func (dp *Datapath) Events(ctx context.Context) (<-chan event.Event, error) {
	if !dp.eventsReading.CompareAndSwap(false, true) {
		return nil, fmt.Errorf("events: already being read")
	}
	rd, err := ringbuf.NewReader(dp.objs.BwEvents)
	if err != nil {
		dp.eventsReading.Store(false)
		return nil, fmt.Errorf("open event ring: %w", err)
	}
	out := make(chan event.Event, 1024)
	boot := bootTime()
	go func() {
		<-ctx.Done()
		rd.Close()
	}()
	go func() {
		defer dp.eventsReading.Store(false)
		defer close(out)
		recs := make(chan event.Event)
		go func() {
			defer close(recs)
			for {
				rd.SetDeadline(time.Now().Add(200 * time.Millisecond))
				rec, err := rd.Read()
				if errors.Is(err, os.ErrDeadlineExceeded) {
					if ctx.Err() != nil {
						return
					}
					continue
				}
				if errors.Is(err, ringbuf.ErrClosed) || ctx.Err() != nil {
					return
				}
				if err != nil {
					// Anything else (a torn record, an epoll error) is
					// counted and the reader goes on: the flows of
					// everything after it must not stop silently.
					dp.eventsReadErrors.Add(1)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				ev, err := decodeEvent(rec.RawSample, boot)
				if err != nil {
					dp.eventsReadErrors.Add(1)
					continue
				}
				select {
				case recs <- ev:
				case <-ctx.Done():
					return
				}
			}
		}()
		for {
			var ev event.Event
			var ok bool
			select {
			case ev, ok = <-recs:
				if !ok {
					return
				}
			case ev = <-dp.synthetic:
			case <-ctx.Done():
				return
			}
			select {
			case out <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// bootTime is wall-clock time at monotonic zero (bpf_ktime_get_ns base).
func bootTime() time.Time {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Now().Add(-time.Duration(ts.Nano()))
}

// decodeEvent turns a raw ring record into an event.Event.
func decodeEvent(raw []byte, boot time.Time) (event.Event, error) {
	var r bpfBwEvent
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &r); err != nil {
		return event.Event{}, fmt.Errorf("decode event: %w", err)
	}
	return rawToEvent(&r, boot), nil
}

func rawToEvent(r *bpfBwEvent, boot time.Time) event.Event {
	addr := func(b [16]byte) netip.Addr {
		a := netip.AddrFrom16(b)
		if r.IsIpv6 == 0 {
			return a.Unmap()
		}
		return a
	}
	ev := event.Event{
		Time:        boot.Add(time.Duration(r.Timestamp)),
		Type:        event.Type(r.Type),
		EndpointID:  r.EndpointId,
		Direction:   resolved.Direction(r.Dir),
		Verdict:     event.Verdict(r.Verdict),
		Reason:      event.DropReason(r.Reason),
		SrcIdentity: identity.NumericIdentity(r.SrcIdentity),
		DstIdentity: identity.NumericIdentity(r.DstIdentity),
		Src:         addr(r.Saddr),
		Dst:         addr(r.Daddr),
		Proto:       resolved.Protocol(r.Proto),
		TCPFlags:    r.TcpFlags,
		IsReply:     r.IsReply != 0,
		Bytes:       r.Bytes,
		RuleID:      r.RuleId,
		ProxyPort:   r.ProxyPort,
		TracePoint:  event.TracePoint(r.TracePoint),
	}
	if ev.Proto == resolved.ProtoICMP || ev.Proto == resolved.ProtoICMPv6 {
		ev.SrcPort = htons(r.Sport) // echo id, network order on the wire
		ev.DstPort = r.Dport        // type<<8|code, host order
	} else {
		ev.SrcPort = htons(r.Sport)
		ev.DstPort = htons(r.Dport)
	}
	return ev
}
