package datapath

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// DumpEntry is one effective entry of an endpoint's active table, read back
// from the kernel: a port range with its combined verdict.
type DumpEntry struct {
	Direction resolved.Direction
	Selector  resolved.SelectorID
	// Identities are the peers whose selector list holds Selector.
	Identities     []identity.NumericIdentity
	Proto          resolved.Protocol // ProtoAny: protocols without their own entry
	PortLo, PortHi uint16
	Verdict        resolved.Verdict
	ProxyPort      uint16
	RuleID         uint32
	Policies       []resolved.PolicyRef
	MatchType      event.MatchType // what of the packet the entry names
}

// EndpointDump is what `bulwark bpf policy get` shows for an endpoint.
type EndpointDump struct {
	Endpoint       Endpoint
	Ready          bool
	Overflow       bool
	OverflowReason string
	EnforceIngress bool
	EnforceEgress  bool
	// AuditIngress/AuditEgress: the default is audit (passes, flagged).
	AuditIngress bool
	AuditEgress  bool
	TableID      uint32
	Entries      []DumpEntry
}

// DumpEndpoint reads the endpoint's record and active table from the maps.
func (dp *Datapath) DumpEndpoint(id uint32) (*EndpointDump, error) {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	es := dp.endpoints[id]
	if es == nil {
		return nil, fmt.Errorf("dump endpoint %d: not attached", id)
	}
	var rec bpfBwEndpoint
	if err := dp.objs.BwEndpoints.Lookup(uint32(es.ep.IfIndex), &rec); err != nil {
		return nil, fmt.Errorf("dump endpoint %d: read record: %w", id, err)
	}
	d := &EndpointDump{
		Endpoint:       es.ep,
		Ready:          rec.Flags&epFlagReady != 0,
		Overflow:       rec.Flags&epFlagOverflow != 0,
		OverflowReason: es.overflowReason,
		EnforceIngress: rec.Flags&epFlagEnforceIngress != 0,
		EnforceEgress:  rec.Flags&epFlagEnforceEgress != 0,
		AuditIngress:   rec.Flags&epFlagAuditIngress != 0,
		AuditEgress:    rec.Flags&epFlagAuditEgress != 0,
		TableID:        rec.TableId[0],
	}
	loaded, err := dp.scanPolicy() // the kernel's table, not the syncer's view
	if err != nil {
		return nil, fmt.Errorf("dump endpoint %d: %w", id, err)
	}
	mir, err := dp.loadMirror()
	if err != nil {
		return nil, fmt.Errorf("dump endpoint %d: %w", id, err)
	}
	lists := mir.sel
	members := map[resolved.SelectorID][]identity.NumericIdentity{}
	for ident, sels := range lists {
		for _, s := range sels {
			members[s] = append(members[s], ident)
		}
	}
	for _, m := range members {
		sort.Slice(m, func(i, j int) bool { return m[i] < m[j] })
	}
	for k, v := range loaded[rec.TableId[0]] {
		tk := tableKey(k)
		lo, hi := tk.PortRange()
		d.Entries = append(d.Entries, DumpEntry{
			Direction: tk.Dir, Selector: tk.Selector, Identities: members[tk.Selector],
			Proto: tk.Proto, PortLo: lo, PortHi: hi, Verdict: resolved.Verdict(v.Verdict),
			ProxyPort: v.ProxyPort, RuleID: v.RuleId,
			Policies: dp.rules[v.RuleId].Policies, MatchType: dp.rules[v.RuleId].MatchType,
		})
	}
	sort.Slice(d.Entries, func(i, j int) bool {
		a, b := d.Entries[i], d.Entries[j]
		if a.Direction != b.Direction {
			return a.Direction < b.Direction
		}
		if a.Selector != b.Selector {
			return a.Selector < b.Selector
		}
		if a.Proto != b.Proto {
			return a.Proto < b.Proto
		}
		return a.PortLo < b.PortLo
	})
	// Adjacent prefixes of one range read back as one range.
	merged := d.Entries[:0]
	for _, e := range d.Entries {
		if n := len(merged); n > 0 {
			p := &merged[n-1]
			if p.Direction == e.Direction && p.Selector == e.Selector && p.Proto == e.Proto &&
				p.Verdict == e.Verdict && p.RuleID == e.RuleID && p.ProxyPort == e.ProxyPort && uint32(p.PortHi)+1 == uint32(e.PortLo) {
				p.PortHi = e.PortHi
				continue
			}
		}
		merged = append(merged, e)
	}
	d.Entries = merged
	return d, nil
}

// Format writes the dump as a readable table.
func (d *EndpointDump) Format(w io.Writer) error {
	state := "ready"
	switch {
	case d.Overflow:
		state = "OVERFLOW (fail closed): " + d.OverflowReason
	case !d.Ready:
		state = "NOT READY (fail closed)"
	}
	fmt.Fprintf(w, "endpoint %d  ifindex %d  identity %s  table %d  %s\n", d.Endpoint.ID, d.Endpoint.IfIndex, d.Endpoint.Identity, d.TableID, state)
	fmt.Fprintf(w, "default: ingress %s, egress %s\n", enforceWord(d.EnforceIngress, d.AuditIngress), enforceWord(d.EnforceEgress, d.AuditEgress))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DIRECTION\tSELECTOR\tPEERS\tPROTO\tPORTS\tVERDICT\tPROXY\tRULE\tPOLICIES")
	for _, e := range d.Entries {
		ports := "ANY"
		if !(e.PortLo == 0 && e.PortHi == 65535) {
			ports = fmt.Sprintf("%d", e.PortLo)
			if e.PortHi != e.PortLo {
				ports += fmt.Sprintf("-%d", e.PortHi)
			}
		}
		peers := make([]string, 0, len(e.Identities))
		for i, id := range e.Identities {
			if i == 8 {
				peers = append(peers, fmt.Sprintf("+%d", len(e.Identities)-8))
				break
			}
			peers = append(peers, id.String())
		}
		pols := make([]string, len(e.Policies))
		for i, p := range e.Policies {
			pols[i] = p.String()
		}
		proxy := "-"
		if e.Verdict == resolved.Redirect {
			proxy = fmt.Sprint(e.ProxyPort)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", e.Direction, e.Selector, strings.Join(peers, ","),
			e.Proto, ports, e.Verdict, proxy, e.RuleID, strings.Join(pols, ","))
	}
	return tw.Flush()
}

func enforceWord(enforce, audit bool) string {
	switch {
	case enforce:
		return "deny"
	case audit:
		return "audit"
	}
	return "allow"
}
