package policy

import (
	"sort"
	"strconv"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// Egress named ports resolve on the destination: a peer matches the named
// port "http" on TCP/8080 only if it is a pod that calls TCP/8080 "http"
// (Kubernetes: "a named port on the destination pod"; Cilium v1.20 resolves
// it per destination identity). An address that is not a pod (ipBlock,
// CIDR, world) has no named ports and never matches one.
//
// Tables are per selector, not per peer pod, so an egress item's peer P
// and named port N become, for every value v that some pod gives N, an
// entry on the derived selector "P, restricted to the identities whose
// pods give N the value v" with port v. As in Cilium, the mapping is per
// identity: an identity whose pods give N different values on one
// protocol matches none of them (fail closed: a per-identity table
// cannot tell its pods apart).

// namedPortSel restricts a label peer to identities with a named port value.
type namedPortSel struct {
	name  string
	proto resolved.Protocol
	port  uint16
}

func (n namedPortSel) String() string {
	return n.proto.String() + "/" + n.name + "=" + strconv.Itoa(int(n.port))
}

// namedPeer derives the selector of base restricted to a named port value.
func namedPeer(base peerSpec, v namedPortSel) peerSpec {
	return peerSpec{label: base.label, named: &v, key: "N:" + v.String() + ":" + base.key}
}

// identityNamedPort returns the value the pods of an identity give a port
// name on a protocol; ok is false when none does or when they disagree.
func (r *Repository) identityNamedPort(id identity.NumericIdentity, name string, proto resolved.Protocol) (uint16, bool) {
	var port uint16
	for k := range r.byIdentity[id] {
		ep := r.endpoints[k]
		if ep == nil {
			continue
		}
		for _, p := range ep.Ports {
			if p.Name != name || p.Proto != proto {
				continue
			}
			if port != 0 && port != p.Port {
				return 0, false
			}
			port = p.Port
		}
	}
	return port, port != 0
}

// namedMembers computes the members of a derived named-port selector.
func (r *Repository) namedMembers(p peerSpec) map[identity.NumericIdentity]struct{} {
	out := map[identity.NumericIdentity]struct{}{}
	for id := range r.byIdentity {
		ls, ok := r.idLabels[id]
		if !ok || !p.label.Matches(ls) {
			continue
		}
		if port, ok := r.identityNamedPort(id, p.named.name, p.named.proto); ok && port == p.named.port {
			out[id] = struct{}{}
		}
	}
	return out
}

// namedValues lists, sorted, the values pods give a port name on the
// protocols ps matches.
func (r *Repository) namedValues(ps portSpec) []namedPortSel {
	var out []namedPortSel
	for v := range r.namedPorts[ps.name] {
		if ps.anyProto || ps.proto == v.proto {
			out = append(out, namedPortSel{name: ps.name, proto: v.proto, port: v.port})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].proto != out[j].proto {
			return out[i].proto < out[j].proto
		}
		return out[i].port < out[j].port
	})
	return out
}

// derivedNamedPeers lists the derived selectors an installed policy's
// egress named ports need with the current pods' ports.
func (r *Repository) derivedNamedPeers(ip *installedPolicy) []peerSpec {
	if !ip.cp.egressNamed {
		return nil
	}
	var out []peerSpec
	for _, rule := range ip.cp.rules {
		sec := &rule.dirs[resolved.Egress]
		for i := range sec.items {
			it := &sec.items[i]
			for _, ps := range it.ports {
				if ps.name == "" {
					continue
				}
				for _, v := range r.namedValues(ps) {
					for _, peer := range ip.itemPeers(it) {
						if peer.fqdn != nil {
							continue // learned addresses are not pods
						}
						out = append(out, namedPeer(peer, v))
					}
				}
			}
		}
	}
	return out
}

// syncNamedPeers acquires the derived selectors a policy needs now and
// releases those it no longer needs.
func (r *Repository) syncNamedPeers(ip *installedPolicy) {
	want := map[string]peerSpec{}
	for _, p := range r.derivedNamedPeers(ip) {
		want[p.key] = p
	}
	for key, id := range ip.namedSelIDs {
		if _, ok := want[key]; !ok {
			r.sels.release(id)
			delete(ip.namedSelIDs, key)
		}
	}
	for key, p := range want {
		if _, ok := ip.namedSelIDs[key]; ok {
			continue
		}
		if ip.namedSelIDs == nil {
			ip.namedSelIDs = map[string]resolved.SelectorID{}
		}
		ip.namedSelIDs[key] = r.sels.acquireWith(p, r.namedMembers)
	}
}

// refreshNamed recomputes the membership of the given identities (whose
// pods or ports changed) in every derived named-port selector.
func (r *Repository) refreshNamed(ids map[identity.NumericIdentity]struct{}) {
	if len(ids) == 0 {
		return
	}
	r.sels.updateComputed(ids, func(p peerSpec, id identity.NumericIdentity) (bool, bool) {
		if p.named == nil {
			return false, false
		}
		ls, ok := r.idLabels[id]
		if !ok || len(r.byIdentity[id]) == 0 || !p.label.Matches(ls) {
			return false, true
		}
		port, ok := r.identityNamedPort(id, p.named.name, p.named.proto)
		return ok && port == p.named.port, true
	})
}
