// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Socket-level service translation for the Bulwark sandbox.
 *
 * cgroup v2 sock_addr programs rewrite a ClusterIP:port destination to one
 * backend pod address before the kernel builds any packet, so every program
 * on a pod's veth only ever sees real pod addresses. The reverse rewrite
 * (recvmsg, getpeername) makes the application see the ClusterIP it asked
 * for.
 *
 * Invariants:
 *  - Addresses are stored as 16 bytes; IPv4 as v4-mapped (::ffff:a.b.c.d),
 *    so one set of maps serves both families and v4-mapped v6 sockets.
 *  - Ports are kept in network byte order, exactly as in bpf_sock_addr.
 *  - A service with count N has backend slots 0..N-1; user space writes the
 *    slots before raising count and lowers count before deleting slots, so a
 *    lookup never sees a missing slot below count.
 *  - Every program returns 1 (allow): translation never blocks a socket call;
 *    policy is enforced elsewhere.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct svc_key {
	__u8 addr[16];
	__u16 port; /* network byte order */
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
};

struct svc_value {
	__u32 count; /* backends in slots 0..count-1 */
	__u32 flags;
};

struct backend_key {
	struct svc_key svc;
	__u32 slot;
};

struct backend_value {
	__u8 addr[16];
	__u16 port; /* network byte order */
	__u16 pad;
};

/* revnat remembers, per socket and backend, the service address the
 * application used, for recvmsg and getpeername. */
struct revnat_key {
	__u64 cookie;
	__u8 addr[16];
	__u16 port;
	__u8 proto;
	__u8 pad;
	__u32 pad2;
};

struct revnat_value {
	__u8 addr[16];
	__u16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
} services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct backend_key);
	__type(value, struct backend_value);
} backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct revnat_key);
	__type(value, struct revnat_value);
} revnat SEC(".maps");

static __always_inline void addr_from_v4(__u8 *addr, __u32 ip4)
{
	__builtin_memset(addr, 0, 10);
	addr[10] = 0xff;
	addr[11] = 0xff;
	__builtin_memcpy(&addr[12], &ip4, 4);
}

static __always_inline __u32 addr_to_v4(const __u8 *addr)
{
	__u32 ip4;

	__builtin_memcpy(&ip4, &addr[12], 4);
	return ip4;
}

static __always_inline void addr_from_v6(__u8 *addr, const struct bpf_sock_addr *ctx)
{
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1];
	__u32 w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];

	__builtin_memcpy(&addr[0], &w0, 4);
	__builtin_memcpy(&addr[4], &w1, 4);
	__builtin_memcpy(&addr[8], &w2, 4);
	__builtin_memcpy(&addr[12], &w3, 4);
}

static __always_inline void addr_to_v6(struct bpf_sock_addr *ctx, const __u8 *addr)
{
	__u32 w;

	__builtin_memcpy(&w, &addr[0], 4);
	ctx->user_ip6[0] = w;
	__builtin_memcpy(&w, &addr[4], 4);
	ctx->user_ip6[1] = w;
	__builtin_memcpy(&w, &addr[8], 4);
	ctx->user_ip6[2] = w;
	__builtin_memcpy(&w, &addr[12], 4);
	ctx->user_ip6[3] = w;
}

/* pick_backend looks the destination up as a service and returns a backend,
 * recording the reverse mapping for this socket. */
static __always_inline struct backend_value *pick_backend(struct bpf_sock_addr *ctx, struct svc_key *key)
{
	struct backend_key bk = {};
	struct backend_value *be;
	struct svc_value *svc;
	struct revnat_key rk = {};
	struct revnat_value rv = {};

	svc = bpf_map_lookup_elem(&services, key);
	if (!svc || svc->count == 0)
		return 0;
	__builtin_memcpy(&bk.svc, key, sizeof(*key));
	bk.slot = bpf_get_prandom_u32() % svc->count;
	be = bpf_map_lookup_elem(&backends, &bk);
	if (!be)
		return 0;

	rk.cookie = bpf_get_socket_cookie(ctx);
	__builtin_memcpy(rk.addr, be->addr, 16);
	rk.port = be->port;
	rk.proto = key->proto;
	__builtin_memcpy(rv.addr, key->addr, 16);
	rv.port = key->port;
	bpf_map_update_elem(&revnat, &rk, &rv, BPF_ANY);
	return be;
}

static __always_inline int xlate4(struct bpf_sock_addr *ctx)
{
	struct svc_key key = {};
	struct backend_value *be;

	addr_from_v4(key.addr, ctx->user_ip4);
	key.port = (__u16)ctx->user_port;
	key.proto = (__u8)ctx->protocol;
	be = pick_backend(ctx, &key);
	if (be) {
		ctx->user_ip4 = addr_to_v4(be->addr);
		ctx->user_port = (__u32)be->port;
	}
	return 1;
}

static __always_inline int xlate6(struct bpf_sock_addr *ctx)
{
	struct svc_key key = {};
	struct backend_value *be;

	addr_from_v6(key.addr, ctx);
	key.port = (__u16)ctx->user_port;
	key.proto = (__u8)ctx->protocol;
	be = pick_backend(ctx, &key);
	if (be) {
		addr_to_v6(ctx, be->addr);
		ctx->user_port = (__u32)be->port;
	}
	return 1;
}

static __always_inline int revxlate4(struct bpf_sock_addr *ctx)
{
	struct revnat_key rk = {};
	struct revnat_value *rv;

	rk.cookie = bpf_get_socket_cookie(ctx);
	addr_from_v4(rk.addr, ctx->user_ip4);
	rk.port = (__u16)ctx->user_port;
	rk.proto = (__u8)ctx->protocol;
	rv = bpf_map_lookup_elem(&revnat, &rk);
	if (rv) {
		ctx->user_ip4 = addr_to_v4(rv->addr);
		ctx->user_port = (__u32)rv->port;
	}
	return 1;
}

static __always_inline int revxlate6(struct bpf_sock_addr *ctx)
{
	struct revnat_key rk = {};
	struct revnat_value *rv;

	rk.cookie = bpf_get_socket_cookie(ctx);
	addr_from_v6(rk.addr, ctx);
	rk.port = (__u16)ctx->user_port;
	rk.proto = (__u8)ctx->protocol;
	rv = bpf_map_lookup_elem(&revnat, &rk);
	if (rv) {
		addr_to_v6(ctx, rv->addr);
		ctx->user_port = (__u32)rv->port;
	}
	return 1;
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx) { return xlate4(ctx); }

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx) { return xlate4(ctx); }

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx) { return revxlate4(ctx); }

SEC("cgroup/getpeername4")
int sock_getpeername4(struct bpf_sock_addr *ctx) { return revxlate4(ctx); }

SEC("cgroup/connect6")
int sock_connect6(struct bpf_sock_addr *ctx) { return xlate6(ctx); }

SEC("cgroup/sendmsg6")
int sock_sendmsg6(struct bpf_sock_addr *ctx) { return xlate6(ctx); }

SEC("cgroup/recvmsg6")
int sock_recvmsg6(struct bpf_sock_addr *ctx) { return revxlate6(ctx); }

SEC("cgroup/getpeername6")
int sock_getpeername6(struct bpf_sock_addr *ctx) { return revxlate6(ctx); }

char __license[] SEC("license") = "Dual BSD/GPL";
