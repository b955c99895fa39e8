package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// hook is one of the two attach points on a host-side veth.
type hook struct {
	name   string // "ingress" (pod egress) or "egress" (pod ingress)
	attach ebpf.AttachType
	parent uint32 // clsact parent for the legacy fallback
}

var hooks = []hook{
	{"ingress", ebpf.AttachTCXIngress, netlink.HANDLE_MIN_INGRESS},
	{"egress", ebpf.AttachTCXEgress, netlink.HANDLE_MIN_EGRESS},
}

func (dp *Datapath) hookProgram(h hook) *ebpf.Program {
	if h.attach == ebpf.AttachTCXIngress {
		return dp.objs.BulwarkFromPod
	}
	return dp.objs.BulwarkToPod
}

func (dp *Datapath) linkPin(ifindex int, h hook) string {
	return filepath.Join(dp.opts.PinDir, linksDir, fmt.Sprintf("tcx_%d_%s", ifindex, h.name))
}

// inNetNS runs fn on a locked OS thread inside the namespace at path ("" =
// the caller's namespace).
func inNetNS(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(path)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", path, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// The thread stays in the wrong namespace: keep it locked so the
		// runtime retires it with the goroutine.
		return errors.Join(ferr, fmt.Errorf("return from netns %s: %w", path, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// AttachEndpoint records the endpoint and attaches both programs to its
// host-side veth. A new endpoint is written NOT ready before any program is
// attached, so its first packet is dropped until Sync loads its policy (or
// at once when the last Sync already had a policy for it). Links are pinned;
// an endpoint already attached (also by a previous agent) is adopted, not
// attached twice.
func (dp *Datapath) AttachEndpoint(ep Endpoint) error {
	if ep.ID >= 1<<31 {
		return fmt.Errorf("attach endpoint %d: id must be below 2^31", ep.ID)
	}
	if ep.IfIndex <= 0 {
		return fmt.Errorf("attach endpoint %d: invalid ifindex %d", ep.ID, ep.IfIndex)
	}
	dp.mu.Lock()
	defer dp.mu.Unlock()
	es := dp.endpoints[ep.ID]
	if es != nil && es.ep.IfIndex != ep.IfIndex {
		return fmt.Errorf("attach endpoint %d: already attached to ifindex %d (detach first)", ep.ID, es.ep.IfIndex)
	}
	for id, other := range dp.endpoints {
		if id != ep.ID && other.ep.IfIndex == ep.IfIndex {
			return fmt.Errorf("attach endpoint %d: ifindex %d belongs to endpoint %d", ep.ID, ep.IfIndex, id)
		}
	}
	isNew := es == nil
	if isNew {
		es = &endpointState{ep: ep}
		dp.endpoints[ep.ID] = es
		// Fail closed first: the record exists, not ready.
		if err := dp.writeEndpointNow(es); err != nil {
			delete(dp.endpoints, ep.ID)
			return fmt.Errorf("attach endpoint %d: %w", ep.ID, err)
		}
	} else {
		es.ep.NetNSPath = ep.NetNSPath
		if es.ep.Identity != ep.Identity {
			es.ep.Identity = ep.Identity
			if err := dp.writeEndpointNow(es); err != nil {
				return fmt.Errorf("attach endpoint %d: %w", ep.ID, err)
			}
		}
	}
	if err := dp.attachHooks(es); err != nil {
		if isNew { // nothing enforces through the record: forget it
			dp.objs.BwEndpoints.Delete(uint32(ep.IfIndex))
			delete(dp.endpoints, ep.ID)
		}
		return fmt.Errorf("attach endpoint %d: %w", ep.ID, err)
	}
	// A policy already known for it: load it now.
	if dp.desired != nil && dp.desired.Endpoints[ep.ID] != nil && es.flags&epFlagReady == 0 {
		if err := dp.syncChangesLocked(*dp.desired, Changes{Endpoints: []uint32{ep.ID}}); err != nil {
			return fmt.Errorf("attach endpoint %d: load its policy: %w", ep.ID, err)
		}
	}
	return nil
}

func (dp *Datapath) attachHooks(es *endpointState) error {
	if dp.opts.ForceLegacyTC {
		return dp.attachLegacy(es)
	}
	for _, l := range es.links {
		l.Close()
	}
	es.links = nil
	var attached []link.Link
	for _, h := range hooks {
		pin := dp.linkPin(es.ep.IfIndex, h)
		prog := dp.hookProgram(h)
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			if err := l.Update(prog); err == nil {
				attached = append(attached, l)
				continue
			}
			// The pinned link is stale (interface gone): replace it.
			l.Close()
			os.Remove(pin)
		}
		var l link.Link
		err := inNetNS(es.ep.NetNSPath, func() error {
			var err error
			l, err = link.AttachTCX(link.TCXOptions{Interface: es.ep.IfIndex, Program: prog, Attach: h.attach})
			return err
		})
		if errors.Is(err, ebpf.ErrNotSupported) {
			for _, a := range attached {
				a.Close()
			}
			return dp.attachLegacy(es)
		}
		if err != nil {
			for _, a := range attached {
				a.Close()
			}
			return fmt.Errorf("attach tcx %s on ifindex %d: %w", h.name, es.ep.IfIndex, err)
		}
		if err := l.Pin(pin); err != nil {
			l.Close()
			return fmt.Errorf("pin link: %w", err)
		}
		attached = append(attached, l)
	}
	es.links = attached
	return nil
}

// attachLegacy installs clsact and a direct-action cls_bpf filter per hook;
// a filter at the same handle is replaced, so re-attaching never stacks.
func (dp *Datapath) attachLegacy(es *endpointState) error {
	es.legacy = true
	return inNetNS(es.ep.NetNSPath, func() error {
		qdisc := &netlink.GenericQdisc{
			QdiscAttrs: netlink.QdiscAttrs{LinkIndex: es.ep.IfIndex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
			QdiscType:  "clsact",
		}
		if err := netlink.QdiscReplace(qdisc); err != nil {
			return fmt.Errorf("add clsact on ifindex %d: %w", es.ep.IfIndex, err)
		}
		for _, h := range hooks {
			f := &netlink.BpfFilter{
				FilterAttrs:  netlink.FilterAttrs{LinkIndex: es.ep.IfIndex, Parent: h.parent, Handle: 1, Priority: 1, Protocol: unix.ETH_P_ALL},
				Fd:           dp.hookProgram(h).FD(),
				Name:         "bulwark_" + h.name,
				DirectAction: true,
			}
			if err := netlink.FilterReplace(f); err != nil {
				return fmt.Errorf("add cls_bpf %s on ifindex %d: %w", h.name, es.ep.IfIndex, err)
			}
		}
		return nil
	})
}

func (dp *Datapath) detachLegacy(es *endpointState) error {
	return inNetNS(es.ep.NetNSPath, func() error {
		var errs []error
		for _, h := range hooks {
			f := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: es.ep.IfIndex, Parent: h.parent, Handle: 1, Priority: 1, Protocol: unix.ETH_P_ALL}}
			if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("delete cls_bpf %s: %w", h.name, err))
			}
		}
		return errors.Join(errs...)
	})
}

// DetachEndpoint removes the programs from the endpoint's veth, its record,
// its conntrack entries and its tables.
func (dp *Datapath) DetachEndpoint(id uint32) error {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	es := dp.endpoints[id]
	if es == nil {
		return nil
	}
	var errs []error
	for _, l := range es.links {
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin link: %w", err))
		}
		l.Close()
	}
	es.links = nil
	for _, h := range hooks {
		// A pin left by a previous agent and not adopted.
		if l, err := link.LoadPinnedLink(dp.linkPin(es.ep.IfIndex, h), nil); err == nil {
			l.Unpin()
			l.Close()
		}
	}
	if es.legacy {
		if err := dp.detachLegacy(es); err != nil {
			errs = append(errs, err)
		}
	}
	if err := dp.objs.BwEndpoints.Delete(uint32(es.ep.IfIndex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("delete endpoint record: %w", err))
	}
	delete(dp.endpoints, id)
	if err := dp.purgeConntrack(uint32(es.ep.IfIndex)); err != nil {
		errs = append(errs, err)
	}
	// Other endpoints' flows may have cached a local route to it.
	if err := dp.bumpRevision(0); err != nil {
		errs = append(errs, err)
	}
	if err := dp.deleteTables(func(tableID uint32) bool { return tableID>>1 == id }); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("detach endpoint %d: %w", id, errors.Join(errs...))
	}
	return nil
}

// writeEndpoint stores the endpoint record as es says (one atomic update:
// the datapath sees the old or the new record, never a mix).
func (dp *Datapath) writeEndpoint(es *endpointState) error {
	tid := es.ep.ID<<1 | es.gen
	rec := bpfBwEndpoint{
		EndpointId: es.ep.ID,
		Identity:   uint32(es.ep.Identity),
		TableId:    [2]uint32{tid, tid},
		Flags:      es.flags,
	}
	if err := dp.objs.BwEndpoints.Put(uint32(es.ep.IfIndex), &rec); err != nil {
		return fmt.Errorf("write endpoint record: %w", err)
	}
	return nil
}

// writeEndpointNow writes the record outside a Sync and moves the revision
// at once, so that established flows on the interface (a reused ifindex)
// see the new record.
func (dp *Datapath) writeEndpointNow(es *endpointState) error {
	if err := dp.writeEndpoint(es); err != nil {
		return err
	}
	return dp.bumpRevision(0)
}

// Endpoints lists the attached endpoints, including those adopted from a
// previous agent's pins (NetNSPath is then unknown until AttachEndpoint
// is called again), sorted by ID. An agent reconciles them on start:
// attach the ones it knows, detach the rest.
func (dp *Datapath) Endpoints() []Endpoint {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	out := make([]Endpoint, 0, len(dp.endpoints))
	for _, es := range dp.endpoints {
		out = append(out, es.ep)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
