package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// Sync makes the maps hold st, comparing all of it with what they hold
// (SyncChanges compares only what changed). Nothing is applied when st
// does not compile. The order never opens a window:
//  1. ipcache additions and changes;
//  2. each changed endpoint's tables go into its inactive buffer;
//  3. identity selector lists become the union of old and new membership;
//  4. endpoint records switch to the new buffer (one atomic update each);
//  5. selector lists become exactly the new membership;
//  6. removed ipcache prefixes are deleted, and the tables of endpoints
//     gone or not ready (a ready endpoint's inactive buffer keeps its
//     previous tables: the next change writes only what differs);
//  7. the policy revision moves, so established flows revalidate on their
//     next packet (kept when still allowed, ended when not).
//
// An endpoint whose tables do not fit is marked OVERFLOW (drops everything)
// and an overflow event is raised: never a silent allow.
//
// The datapath keeps st (to load endpoints attached later): the caller
// must not modify it, or what it points to, after the call.
func (dp *Datapath) Sync(st State) error {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	return dp.syncLocked(st)
}

type pendingSwitch struct {
	es       *endpointState
	gen      uint32
	flags    uint32
	identity identity.NumericIdentity
}

// mirror is what the syncer last wrote to the maps it owns; it is read from
// the maps once (adopting a previous agent's content) and dropped after any
// failed write, so that diffs are computed against the kernel's truth.
type mirror struct {
	ip  map[bpfBwIpcacheKey]uint32
	sel map[identity.NumericIdentity][]resolved.SelectorID
	pol map[uint32]map[bpfBwPolicyKey]bpfBwPolicyValue
}

func (dp *Datapath) loadMirror() (*mirror, error) {
	if dp.mirror != nil {
		return dp.mirror, nil
	}
	ip, err := dp.readIPCache()
	if err != nil {
		return nil, err
	}
	sel, err := dp.readSelectorLists()
	if err != nil {
		return nil, err
	}
	pol, err := dp.scanPolicy()
	if err != nil {
		return nil, err
	}
	dp.mirror = &mirror{ip: ip, sel: sel, pol: pol}
	return dp.mirror, nil
}

// forget drops the mirror after a failed write: the next sync re-reads the
// maps and compares everything (no incremental sync until then).
func (dp *Datapath) forget() {
	dp.mirror = nil
	dp.synced = false
}

// syncPlan is what one sync reconciles; everything else is known to hold
// what it should already.
type syncPlan struct {
	eps   []uint32                   // attached endpoints whose tables and record are reconciled, ascending
	ipPut map[bpfBwIpcacheKey]uint32 // ipcache entries to add or change (when the mirror differs)
	ipDel []bpfBwIpcacheKey          // ipcache entries to remove (when the mirror holds them)
	ids   []identity.NumericIdentity // identities whose selector list is reconciled
	// newlyOverflowed: identities whose list overflows now and did not
	// before (an event each).
	newlyOverflowed []identity.NumericIdentity
}

func (dp *Datapath) syncLocked(st State) (err error) {
	if dp.closed {
		return fmt.Errorf("sync: datapath closed")
	}
	c, err := Compile(st)
	if err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	mir, err := dp.loadMirror()
	if err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	plan := syncPlan{ipPut: make(map[bpfBwIpcacheKey]uint32, len(st.IPCache))}
	for p, id := range st.IPCache {
		plan.ipPut[ipcacheKey(p)] = uint32(id)
	}
	for k := range mir.ip {
		if _, ok := plan.ipPut[k]; !ok {
			plan.ipDel = append(plan.ipDel, k)
		}
	}
	plan.eps = make([]uint32, 0, len(dp.endpoints))
	for id := range dp.endpoints {
		plan.eps = append(plan.eps, id)
	}
	slices.Sort(plan.eps)
	plan.ids = make([]identity.NumericIdentity, 0, len(c.SelectorLists))
	for id := range c.SelectorLists {
		plan.ids = append(plan.ids, id)
		if _, over := c.Overflowed[id]; over {
			if _, was := dp.compiledOverflow(id); !was {
				plan.newlyOverflowed = append(plan.newlyOverflowed, id)
			}
		}
	}
	for id := range mir.sel {
		if _, ok := c.SelectorLists[id]; !ok {
			plan.ids = append(plan.ids, id)
		}
	}
	if err := dp.apply(st, c, mir, plan); err != nil {
		return err
	}
	dp.compiled = c
	dp.synced = true
	return nil
}

// apply writes plan's part of c (compiled from st) to the maps, in the
// order Sync describes.
func (dp *Datapath) apply(st State, c *Compiled, mir *mirror, plan syncPlan) (err error) {
	changed := false
	defer func() {
		if err != nil {
			dp.forget() // re-read the kernel's truth next time
			if changed {
				// Half-applied: established flows must still revalidate
				// against what the maps hold now.
				if berr := dp.bumpRevision(0); berr != nil {
					err = errors.Join(err, fmt.Errorf("sync: %w", berr))
				}
			}
		}
	}()

	// 1. ipcache additions.
	curIP := mir.ip
	for k, id := range plan.ipPut {
		if old, ok := curIP[k]; ok && old == id {
			continue
		}
		if err := dp.objs.BwIpcache.Put(&k, &bpfBwIpcacheValue{Identity: id}); err != nil {
			return fmt.Errorf("sync: ipcache %s: %w", ipcachePrefix(k), err)
		}
		curIP[k] = id
		changed = true
	}

	// 2. tables into inactive buffers.
	loaded := mir.pol
	total := 0
	for _, t := range loaded {
		total += len(t)
	}
	var switches []pendingSwitch
	staged := map[uint32]bool{} // buffers written for a pending switch
	for _, id := range plan.eps {
		es := dp.endpoints[id]
		if es == nil {
			continue
		}
		ce := c.Endpoints[id]
		if ce == nil {
			if es.flags != 0 {
				switches = append(switches, pendingSwitch{es, es.gen, 0, es.ep.Identity})
			}
			continue
		}
		ident := es.ep.Identity
		if ce.Identity != 0 {
			ident = ce.Identity // the policy's identity is the endpoint's
		}
		flags := uint32(epFlagReady)
		if ce.EnforceIngress {
			flags |= epFlagEnforceIngress
		}
		if ce.EnforceEgress {
			flags |= epFlagEnforceEgress
		}
		flags |= ce.auditFlags()
		activeTID := id<<1 | es.gen
		want := tableEntries(id<<1, ce)
		if es.flags&epFlagReady != 0 && sameTable(loaded[activeTID], want) {
			if es.flags != flags || es.ep.Identity != ident {
				switches = append(switches, pendingSwitch{es, es.gen, flags, ident})
			}
			continue
		}
		// The inactive buffer keeps the version before the active one:
		// only what differs from it is written.
		newGen := es.gen ^ 1
		newTID := id<<1 | newGen
		if total-len(loaded[newTID])+len(want) > int(dp.sizes.Policy) {
			freed, err := dp.dropInactive(loaded, staged)
			if err != nil {
				return fmt.Errorf("sync: make room for endpoint %d: %w", id, err)
			}
			total -= freed
		}
		if total-len(loaded[newTID])+len(want) > int(dp.sizes.Policy) {
			dp.raiseOverflow(id, fmt.Sprintf("policy table needs %d entries, %d of %d in use", len(want), total-len(loaded[newTID]), dp.sizes.Policy))
			switches = append(switches, pendingSwitch{es, es.gen, epFlagOverflow, ident})
			continue
		}
		buf := loaded[newTID]
		if buf == nil {
			buf = make(map[bpfBwPolicyKey]bpfBwPolicyValue, len(want))
			loaded[newTID] = buf
		}
		before := len(buf)
		werr := writeDiff(dp.objs.BwPolicy, buf, want, newTID)
		total += len(buf) - before
		if werr != nil {
			if err := dp.deletePolicyKeys(buf); err != nil {
				return fmt.Errorf("sync: undo partial table of endpoint %d: %w", id, err)
			}
			total -= len(buf)
			delete(loaded, newTID)
			dp.raiseOverflow(id, fmt.Sprintf("writing policy table: %v", werr))
			switches = append(switches, pendingSwitch{es, es.gen, epFlagOverflow, ident})
			continue
		}
		staged[newTID] = true
		switches = append(switches, pendingSwitch{es, newGen, flags, ident})
	}

	// 3. selector lists: union of old and new membership.
	curSel := mir.sel
	for _, id := range plan.ids {
		sels := c.SelectorLists[id]
		if len(sels) == 0 || sameSelectors(curSel[id], sels) {
			continue
		}
		if len(curSel[id]) == 0 { // a new identity: its list is final now
			if err := dp.putSelectorList(id, sels); err != nil {
				return fmt.Errorf("sync: %w", err)
			}
			curSel[id] = sels
			changed = true
			continue
		}
		union := unionSelectors(curSel[id], sels)
		if len(union) > MaxSelectorsPerIdentity {
			union = sels
		}
		if err := dp.putSelectorList(id, union); err != nil {
			return fmt.Errorf("sync: %w", err)
		}
	}

	// 4. switch endpoints.
	for _, sw := range switches {
		sw.es.gen, sw.es.flags, sw.es.ep.Identity = sw.gen, sw.flags, sw.identity
		if sw.flags&epFlagOverflow == 0 {
			sw.es.overflowReason = ""
		}
		if err := dp.writeEndpoint(sw.es); err != nil {
			return fmt.Errorf("sync: endpoint %d: %w", sw.es.ep.ID, err)
		}
		changed = true
	}

	// 5. selector lists: exactly the new membership.
	for _, id := range plan.ids {
		sels := c.SelectorLists[id]
		if len(sels) == 0 {
			if _, ok := curSel[id]; ok {
				if err := dp.objs.BwIdSelectors.Delete(uint32(id)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					return fmt.Errorf("sync: delete selector list of %d: %w", id, err)
				}
				delete(curSel, id)
				changed = true
			}
			continue
		}
		if !sameSelectors(curSel[id], sels) {
			changed = true
			if err := dp.putSelectorList(id, sels); err != nil {
				return fmt.Errorf("sync: %w", err)
			}
			curSel[id] = sels
		}
	}
	for _, id := range plan.newlyOverflowed {
		dp.raiseIdentityOverflow(id, c.Overflowed[id])
	}

	// 6. buffers of endpoints gone or not ready, and removed prefixes. A
	// ready endpoint keeps its inactive buffer: the next change of its
	// tables writes only what differs from it.
	for tid, keys := range loaded {
		if es := dp.endpoints[tid>>1]; es != nil && es.flags&epFlagReady != 0 {
			continue
		}
		if err := dp.deletePolicyKeys(keys); err != nil {
			return fmt.Errorf("sync: delete old table %d: %w", tid, err)
		}
		delete(loaded, tid)
		total -= len(keys)
	}
	for _, k := range plan.ipDel {
		if _, ok := curIP[k]; !ok {
			continue
		}
		if err := dp.objs.BwIpcache.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("sync: delete ipcache %s: %w", ipcachePrefix(k), err)
		}
		delete(curIP, k)
		changed = true
	}

	// 7. revision.
	if changed {
		if err := dp.bumpRevision(st.Revision); err != nil {
			return fmt.Errorf("sync: %w", err)
		}
	}
	stCopy := st
	dp.desired = &stCopy
	for id, info := range c.Rules {
		dp.rules[id] = info
	}
	dp.counts["policy"] = total
	dp.counts["ipcache"] = len(curIP)
	dp.counts["id_selectors"] = len(c.SelectorLists)
	dp.counts["endpoints"] = len(dp.endpoints)
	return nil
}

// bumpRevision moves the policy revision (to at least min): established
// flows revalidate on their next packet, and read their endpoint record
// again. It must follow every change of an endpoint record, because the
// datapath's established path does not read the record while the revision
// stays.
func (dp *Datapath) bumpRevision(min uint64) error {
	rev := max(dp.revision+1, min)
	if err := dp.writeConfig(rev); err != nil {
		return err
	}
	dp.revision = rev
	return nil
}

// writeConfig writes the datapath's global configuration: the policy
// revision, the conntrack clock's HZ and the flags of the options.
func (dp *Datapath) writeConfig(revision uint64) error {
	var flags uint32
	if !dp.opts.DisableLocalDelivery {
		flags |= cfgLocalDelivery
	}
	if err := dp.objs.BwConfigMap.Put(uint32(0), &bpfBwConfig{Revision: revision, Hz: dp.hz, Flags: flags}); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

func (dp *Datapath) compiledOverflow(id identity.NumericIdentity) (int, bool) {
	if dp.compiled == nil {
		return 0, false
	}
	n, ok := dp.compiled.Overflowed[id]
	return n, ok
}

func (dp *Datapath) raiseOverflow(epID uint32, why string) {
	dp.overflows.Add(1)
	if es := dp.endpoints[epID]; es != nil {
		es.overflowReason = why
	}
	dp.sendSynthetic(event.Event{
		Time: time.Now(), Type: event.TypeOverflow, EndpointID: epID,
		Verdict: event.Dropped, Reason: event.ReasonTableOverflow,
	})
}

func (dp *Datapath) raiseIdentityOverflow(id identity.NumericIdentity, n int) {
	dp.overflows.Add(1)
	dp.sendSynthetic(event.Event{
		Time: time.Now(), Type: event.TypeOverflow, Verdict: event.Dropped,
		Reason: event.ReasonTableOverflow, SrcIdentity: id,
	})
	_ = n // the count is in Compiled().Overflowed
}

func (dp *Datapath) sendSynthetic(e event.Event) {
	select {
	case dp.synthetic <- e:
	default: // nobody reading and the buffer is full: counted in overflows
	}
}

// tableEntries turns a compiled endpoint into map keys (table id left at
// base; the caller sets the buffer's id).
func tableEntries(base uint32, ce *CompiledEndpoint) map[bpfBwPolicyKey]bpfBwPolicyValue {
	out := make(map[bpfBwPolicyKey]bpfBwPolicyValue, len(ce.Entries))
	for k, v := range ce.Entries {
		out[policyKey(base, k)] = policyValue(v)
	}
	return out
}

func policyKey(tableID uint32, k TableKey) bpfBwPolicyKey {
	return bpfBwPolicyKey{
		Prefixlen: policyProtoBits + uint32(k.PortBits),
		TableId:   tableID,
		Selector:  uint32(k.Selector),
		Dir:       uint8(k.Dir),
		Proto:     uint8(k.Proto),
		Port:      htons(k.Port),
	}
}

func tableKey(k bpfBwPolicyKey) TableKey {
	return TableKey{
		Dir:      resolved.Direction(k.Dir),
		Selector: resolved.SelectorID(k.Selector),
		Proto:    resolved.Protocol(k.Proto),
		Port:     htons(k.Port),
		PortBits: uint8(k.Prefixlen - policyProtoBits),
	}
}

// sameTable compares loaded entries of one table with wanted ones (whose
// table id is the base id: compared without it).
func sameTable(loaded, want map[bpfBwPolicyKey]bpfBwPolicyValue) bool {
	if len(loaded) != len(want) {
		return false
	}
	for k, v := range loaded {
		k.TableId &^= 1
		if w, ok := want[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (dp *Datapath) scanPolicy() (map[uint32]map[bpfBwPolicyKey]bpfBwPolicyValue, error) {
	out := map[uint32]map[bpfBwPolicyKey]bpfBwPolicyValue{}
	var k bpfBwPolicyKey
	var v bpfBwPolicyValue
	it := dp.objs.BwPolicy.Iterate()
	for it.Next(&k, &v) {
		t := out[k.TableId]
		if t == nil {
			t = map[bpfBwPolicyKey]bpfBwPolicyValue{}
			out[k.TableId] = t
		}
		t[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read policy map: %w", err)
	}
	return out, nil
}

func (dp *Datapath) deletePolicyKeys(keys map[bpfBwPolicyKey]bpfBwPolicyValue) error {
	for k := range keys {
		if err := dp.objs.BwPolicy.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete policy entry: %w", err)
		}
	}
	return nil
}

// writeDiff makes table tid (whose content buf mirrors, updated as it
// goes) hold want (keyed with the base table id).
func writeDiff(m *ebpf.Map, buf, want map[bpfBwPolicyKey]bpfBwPolicyValue, tid uint32) error {
	for k, v := range want {
		k.TableId = tid
		if old, ok := buf[k]; ok && old == v {
			continue
		}
		if err := m.Put(&k, &v); err != nil {
			return err
		}
		buf[k] = v
	}
	for k := range buf {
		base := k
		base.TableId = tid &^ 1
		if _, ok := want[base]; ok {
			continue
		}
		if err := m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
		delete(buf, k)
	}
	return nil
}

// dropInactive deletes the inactive buffers (but those staged for a
// switch) to make room; it returns how many entries it freed.
func (dp *Datapath) dropInactive(loaded map[uint32]map[bpfBwPolicyKey]bpfBwPolicyValue, staged map[uint32]bool) (int, error) {
	freed := 0
	for tid, keys := range loaded {
		es := dp.endpoints[tid>>1]
		if staged[tid] || (es != nil && es.flags&epFlagReady != 0 && tid == es.ep.ID<<1|es.gen) {
			continue
		}
		if err := dp.deletePolicyKeys(keys); err != nil {
			return freed, err
		}
		freed += len(keys)
		delete(loaded, tid)
	}
	return freed, nil
}

// deleteTables removes every table whose id match selects.
func (dp *Datapath) deleteTables(match func(tableID uint32) bool) error {
	mir, err := dp.loadMirror()
	if err != nil {
		return err
	}
	for tid, keys := range mir.pol {
		if match(tid) {
			if err := dp.deletePolicyKeys(keys); err != nil {
				dp.forget()
				return err
			}
			delete(mir.pol, tid)
		}
	}
	return nil
}

func (dp *Datapath) readIPCache() (map[bpfBwIpcacheKey]uint32, error) {
	out := map[bpfBwIpcacheKey]uint32{}
	var k bpfBwIpcacheKey
	var v bpfBwIpcacheValue
	it := dp.objs.BwIpcache.Iterate()
	for it.Next(&k, &v) {
		out[k] = v.Identity
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read ipcache: %w", err)
	}
	return out, nil
}

func (dp *Datapath) readSelectorLists() (map[identity.NumericIdentity][]resolved.SelectorID, error) {
	out := map[identity.NumericIdentity][]resolved.SelectorID{}
	var k uint32
	var v bpfBwSelectorList
	it := dp.objs.BwIdSelectors.Iterate()
	for it.Next(&k, &v) {
		n := min(int(v.Count), MaxSelectorsPerIdentity)
		l := make([]resolved.SelectorID, n)
		for i := range n {
			l[i] = resolved.SelectorID(v.Selectors[i])
		}
		out[identity.NumericIdentity(k)] = l
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read selector lists: %w", err)
	}
	return out, nil
}

func (dp *Datapath) putSelectorList(id identity.NumericIdentity, sels []resolved.SelectorID) error {
	var v bpfBwSelectorList
	if len(sels) > MaxSelectorsPerIdentity {
		v.Flags = selFlagOverflow
	} else {
		v.Count = uint32(len(sels))
		for i, s := range sels {
			v.Selectors[i] = uint32(s)
		}
	}
	if err := dp.objs.BwIdSelectors.Put(uint32(id), &v); err != nil {
		return fmt.Errorf("write selector list of identity %d: %w", id, err)
	}
	return nil
}

func unionSelectors(a, b []resolved.SelectorID) []resolved.SelectorID {
	seen := map[resolved.SelectorID]bool{}
	var out []resolved.SelectorID
	for _, l := range [][]resolved.SelectorID{a, b} {
		for _, s := range l {
			if !seen[s] {
				seen[s] = true
				out = append(out, s)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func sameSelectors(a, b []resolved.SelectorID) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// ipcacheKey is a prefix as the trie holds it: 16 bytes, IPv4 v4-mapped.
func ipcacheKey(p netip.Prefix) bpfBwIpcacheKey {
	p = p.Masked()
	a := p.Addr()
	bits := p.Bits()
	if a.Is4() {
		bits += 96
	}
	return bpfBwIpcacheKey{Prefixlen: uint32(bits), Addr: a.As16()}
}

func ipcachePrefix(k bpfBwIpcacheKey) netip.Prefix {
	a := netip.AddrFrom16(k.Addr)
	bits := int(k.Prefixlen)
	if a.Is4In6() && bits >= 96 {
		return netip.PrefixFrom(a.Unmap(), bits-96)
	}
	return netip.PrefixFrom(a, bits)
}
