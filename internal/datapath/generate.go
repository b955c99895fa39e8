// Package datapath loads Bulwark's eBPF programs and maps, attaches them to
// pod interfaces and keeps the maps in sync with the resolved policy.
//
// Programs (bpf/datapath.c and its parts by job in bpf/lib/*.h, one body for
// both directions):
// bulwark_from_pod runs at tc/TCX ingress of a pod's host-side veth (the
// pod's egress), bulwark_to_pod at its egress (the pod's ingress). TCX is
// used where the kernel has it, clsact + cls_bpf otherwise.
//
// Policy lookup, "entries as a sum": the peer's identity is looked up in the
// ipcache (LPM, miss = world); its selector list (the peer selectors it
// belongs to that some table references, at most MaxSelectorsPerIdentity)
// is walked, and for each selector one LPM lookup keyed {table, selector,
// dir, proto, port} with the port as the LPM tail (a second one under
// proto 0 when the protocol has no entries of its own). Compile merges
// overlapping entries per (selector, proto) into disjoint port segments with
// their combined verdict (deny > redirect > allow), so the longest prefix
// already holds the right answer. The table size is entries + port-prefix
// splits, independent of how many identities a selector matches; the
// membership costs one list per identity. Only new flows pay: conntrack
// decides the rest, and revalidates a flow when the policy revision moved.
//
// Established path: an IPv4 TCP/UDP packet of a flow validated under the
// current revision, which changes nothing in its conntrack entry but the
// expiry, is read in place and passed after one or two conntrack lookups,
// the config read and a per-CPU count: no endpoint record, no ipcache, no
// policy. That is why every change of an endpoint record moves the
// revision. Conntrack time is jiffies (bpf_jiffies64 is a load; the ktime
// helpers cost more than the rest of this path), with HZ measured by the
// loader and written into the config map.
//
// L7 redirect (Cilium's BPF TPROXY): a Redirect verdict marks the packet
// ProxyMark(port) and assigns it (bpf_sk_assign) to the proxy's socket on
// that port in the node's namespace: the proxy's socket of the connection,
// else its transparent listener (TCP) or socket (UDP). Only tc ingress can
// assign, so the destination's own ingress hook (tc egress) turns a packet
// for the proxy back into its interface's ingress and bulwark_from_pod
// assigns it there; with local delivery the source's hook assigns it
// directly. No socket = the packet drops (ReasonProxyUnavailable). The
// agent's policy routing rule (fwmark ProxyMarkMagic/ProxyMarkMask, a
// local default route) delivers marked packets locally. The proxy's own
// upstream packets carry ProxyIdentityMark(source identity): the
// destination's ingress judges them as the original source and a redirect
// allows them (the proxy enforced the L7 rules), so they are never
// redirected again.
//
// Trace events (Cilium's TRACE) are aggregated per connection and
// direction in a byte of the conntrack entry: a packet is traced when it is
// its direction's first or adds FIN or RST. The hook leaves the request in
// skb->cb and the program emits the trace once it knows where the packet
// went (to-endpoint, from-endpoint, to-stack, to-proxy). Traces do not wake
// the event reader: the wakeups were most of a new connection's program
// time (BenchmarkTransactionCost).
//
// The BPF objects are compiled by bpf2go; the generated bpf_bpfel.go and
// bpf_bpfel.o are committed so that `go build` needs no clang. Regenerate
// with `go generate ./internal/datapath`.
package datapath

import "github.com/bulwark-net/bulwark/internal/identity"

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -target bpfel -cc clang -cflags "-O2 -g -Wall -Werror" -type bw_endpoint -type bw_ipcache_key -type bw_ipcache_value -type bw_selector_list -type bw_policy_key -type bw_policy_value -type bw_ct_key -type bw_ct_entry -type bw_config -type bw_metric -type bw_event -type bw_frag_key -type bw_frag_ports bpf ../../bpf/datapath.c -- -I/usr/include/x86_64-linux-gnu -I../../bpf

// ProxyMarkMagic marks a packet the datapath redirects to the L7 proxy
// (PROXY_MARK_MAGIC in bpf/datapath.c); the proxy port is in the upper 16
// bits of the mark.
const ProxyMarkMagic = 0x0200

// ProxyMarkMask selects the magic bits of a mark (MARK_MAGIC_MASK).
const ProxyMarkMask = 0x0F00

// ProxyIdentityMagic marks the L7 proxy's upstream packets
// (PROXY_IDENTITY_MAGIC); the source identity is in the other bits.
const ProxyIdentityMagic = 0x0E00

// ProxyMark is the skb mark of a packet redirected to the proxy on port.
func ProxyMark(port uint16) uint32 { return uint32(port)<<16 | ProxyMarkMagic }

// ProxyIdentityMark is the mark (SO_MARK) of the proxy's upstream socket for
// a flow from id: identity bits 0-15 in the upper 16 bits, 16-23 in the low
// byte, 24-27 in bits 12-15. Identities are below 1<<25 (local ones).
func ProxyIdentityMark(id identity.NumericIdentity) uint32 {
	v := uint32(id)
	return (v&0xffff)<<16 | ProxyIdentityMagic | (v>>16)&0xff | ((v>>24)&0xf)<<12
}
