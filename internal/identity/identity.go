// Package identity owns Bulwark's security identities: the numeric identity of
// a label set (pod labels + namespace + namespace labels), the reserved
// identities of the entities (host, world, ...), and the local identities
// given to CIDR prefixes.
//
// A pod's identity is built from its identity-relevant labels only
// (IsIdentityRelevant: rollout hashes, job uids and other per-pod
// bookkeeping are left out, as Cilium's default label filter does), so
// pods of successive rollouts share an identity and no selector can match
// on an excluded label.
//
// Numbering follows Cilium so that identities read the same in both tools:
// reserved identities are below MinCluster, cluster identities are allocated
// from MinCluster up, and local (node-scoped, CIDR) identities have LocalScope
// set.
package identity

import "strconv"

// NumericIdentity is the number the datapath carries for a security identity.
type NumericIdentity uint32

// Reserved identities (Cilium's numbering).
const (
	Unknown       NumericIdentity = 0
	Host          NumericIdentity = 1
	World         NumericIdentity = 2
	Unmanaged     NumericIdentity = 3
	Health        NumericIdentity = 4
	Init          NumericIdentity = 5
	RemoteNode    NumericIdentity = 6
	KubeAPIServer NumericIdentity = 7
	Ingress       NumericIdentity = 8
	WorldIPv4     NumericIdentity = 9
	WorldIPv6     NumericIdentity = 10

	// MinCluster is the first identity allocated to a label set.
	MinCluster NumericIdentity = 256
	// LocalScope marks node-local identities (CIDR prefixes, FQDN-learned IPs).
	LocalScope NumericIdentity = 1 << 24
)

var reservedNames = map[NumericIdentity]string{
	Unknown:       "unknown",
	Host:          "host",
	World:         "world",
	Unmanaged:     "unmanaged",
	Health:        "health",
	Init:          "init",
	RemoteNode:    "remote-node",
	KubeAPIServer: "kube-apiserver",
	Ingress:       "ingress",
	WorldIPv4:     "world-ipv4",
	WorldIPv6:     "world-ipv6",
}

// IsReserved reports whether id is one of the reserved identities.
func (id NumericIdentity) IsReserved() bool { return id < MinCluster }

// IsLocal reports whether id is a node-local (CIDR) identity.
func (id NumericIdentity) IsLocal() bool { return id&LocalScope != 0 }

// ReservedName returns the entity name of a reserved identity ("world", ...).
func (id NumericIdentity) ReservedName() (string, bool) {
	n, ok := reservedNames[id]
	return n, ok
}

func (id NumericIdentity) String() string {
	if n, ok := reservedNames[id]; ok {
		return "reserved:" + n
	}
	return strconv.FormatUint(uint64(id), 10)
}
