// Package policy is Bulwark's policy engine: a repository of the cluster
// state that policy depends on (namespaces, pods, NetworkPolicies,
// CiliumNetworkPolicies, CiliumClusterwideNetworkPolicies, learned FQDNs)
// that keeps, incrementally, every endpoint's resolved policy
// (resolved.EndpointPolicy), the membership of peer selectors
// (resolved.SelectorSet) and the ipcache (IP/prefix → identity).
//
// Invariants:
//   - An endpoint selected by any rule with a section for a direction is
//     default-deny in that direction (NetworkPolicy: by policyTypes;
//     Cilium: a non-empty ingress/ingressDeny or egress/egressDeny list,
//     unless enableDefaultDeny says false).
//   - Allows are additive across all kinds; a deny entry from any kind wins
//     over every allow (resolved.Lookup).
//   - Audit mode (AuditAnnotation, policy.bulwark.io/audit: "true" on a
//     NetworkPolicy, CNP or CCNP; any value but "true"/"false" is refused):
//     the policy's deny items become resolved.AuditDeny entries, its
//     default deny counts only where no enforcing policy selects the
//     endpoint in that direction (DirectionPolicy.Audit instead of
//     Enforced), its allow items are plain allows. Audit never passes a
//     packet an enforcing policy drops (resolved package doc).
//   - Entries are a sum: one per (rule peer selector, protocol, port
//     range, verdict), never one per peer identity.
//   - Named ports resolve on the destination: for ingress, the endpoint's
//     own container ports (so tables are per endpoint, shared between
//     endpoints with the same identity and ports); for egress, the ports of
//     the destination pod, per destination identity as Cilium does (an
//     identity whose pods disagree on a name matches none of its values;
//     an address that is not a pod never matches a named port).
//   - CIDR selectors select CIDR identities only: a pod address always
//     carries its pod identity (Kubernetes leaves this open for ipBlock;
//     Cilium and Bulwark never let an ipBlock select a pod). Every prefix a
//     policy names (excepts included) has a local identity labelled with all
//     its containing prefixes; other addresses are world-ipv4/world-ipv6,
//     which carry the 0.0.0.0/0 (::/0) label.
//   - An update is validated whole before anything changes: it applies
//     completely or not at all, and reports what changed (Change).
//   - Selector IDs are derived from the selectors' canonical keys (see
//     selectorCache), never from history: repositories holding the same
//     selectors number them alike, so an agent restarted on the same
//     objects (with its persisted identities, Options.Allocator) computes
//     the tables its datapath already holds. Repository.SelectorIDs and
//     Options.SelectorIDs carry the numbering across restarts for the rare
//     hash collision.
//   - Only identity-relevant pod labels are in identities
//     (identity.IsIdentityRelevant: pod-template-hash and the like are
//     left out, as by Cilium's default label filter), so a selector on an
//     excluded label behaves as if no pod had it; validate warns about such
//     selectors.
//
// toServices peers are the pods selected by the Services' selectors (in
// the Service's namespace), re-resolved whenever a Service changes; a
// Service without a selector contributes no peer (its backends are not
// known here).
//
// Differences from Cilium, on purpose or for now: ICMP rules (icmps) allow
// every ICMP type of the family (the resolved table has no ICMP type);
// fromRequires/toRequires, from/toGroups, fromNodes/toNodes, host
// policies (nodeSelector), CIDR groups, Kafka and generic L7 rules, TLS
// interception, listeners, serverNames, headerMatches and mutual
// authentication are rejected with an error naming the field rather than
// silently ignored. Unsupported (refusals.go) is the only list of these
// features; CompilePolicy is the refusal check that validate (the
// `bulwark policy validate` command) reports, so the two cannot disagree.
package policy
