package agent

import (
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/proxy"
	httpproxy "github.com/bulwark-net/bulwark/internal/proxy/http"
)

// Rate limits (CiliumEnvoyConfig local_ratelimit), enforced by the HTTP
// proxy. A config names Services; their backends' target ports (TCP) are
// sent to the proxy wherever L3/L4 policy lets the traffic in — an Allow
// becomes a Redirect with every request allowed at L7, existing L7 rules
// stay as they are — and every request to them draws from the config's one
// token bucket (Envoy's local_ratelimit keeps one per listener). So a limit
// is enforced on all the traffic it covers, never on part of it.

// rlAllPeers is the synthetic selector of every identity, used for the
// redirect of a rate-limited port whose ingress is not enforced (every
// peer is allowed there).
const rlAllPeers resolved.SelectorID = 1<<32 - 1

// rateLimits keeps one bucket per CiliumEnvoyConfig across reconciles
// (replaced when its configuration changes).
type rateLimits struct {
	mu      sync.Mutex
	buckets map[string]*httpproxy.TokenBucket // by kind/namespace/name
}

// rlTargets are the rate-limited (endpoint, port) pairs of one state.
type rlTargets map[policy.EndpointKey]map[uint16]rlTarget

type rlTarget struct {
	bucket *httpproxy.TokenBucket
	origin resolved.PolicyRef // the CiliumEnvoyConfig
}

// targets computes the rate-limited backends of set's CiliumEnvoyConfigs
// among the snapshot's endpoints. Configs that do not parse were refused at
// apply; a persisted one that no longer parses limits nothing and is
// logged.
func (r *rateLimits) targets(set *manifest.Set, snap *policy.Snapshot, logErr func(string, error)) rlTargets {
	if set == nil || snap == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.buckets == nil {
		r.buckets = map[string]*httpproxy.TokenBucket{}
	}
	out := rlTargets{}
	seen := map[string]bool{}
	for _, u := range set.Unsupported {
		if !u.IsEnvoyConfig() {
			continue
		}
		cfg, err := httpproxy.ParseEnvoyConfig(u.Raw)
		if err != nil {
			logErr(u.Kind+" "+u.Namespace+"/"+u.Name, err)
			continue
		}
		id := cfg.Kind + "/" + cfg.Namespace + "/" + cfg.Name
		seen[id] = true
		b := r.buckets[id]
		if b == nil || b.Config() != cfg.Bucket {
			if b, err = httpproxy.NewTokenBucket(cfg.Bucket, nil); err != nil {
				logErr(id, err)
				continue
			}
			r.buckets[id] = b
		}
		origin := resolved.PolicyRef{Kind: cfg.Kind, Namespace: cfg.Namespace, Name: cfg.Name}
		for _, ref := range cfg.Services {
			svc := findService(set, ref)
			if svc == nil || len(svc.Spec.Selector) == 0 {
				continue
			}
			for key, ep := range snap.Endpoints {
				if key.Namespace != svc.Namespace || !selects(svc.Spec.Selector, ep.Labels) {
					continue
				}
				for _, sp := range svc.Spec.Ports {
					if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
						continue
					}
					port := targetPort(sp, ep)
					if port == 0 {
						continue
					}
					if out[key] == nil {
						out[key] = map[uint16]rlTarget{}
					}
					out[key][port] = rlTarget{bucket: b, origin: origin}
				}
			}
		}
	}
	for id := range r.buckets {
		if !seen[id] {
			delete(r.buckets, id)
		}
	}
	return out
}

func findService(set *manifest.Set, ref httpproxy.ServiceRef) *corev1.Service {
	for _, s := range set.Services {
		if s.Namespace == ref.Namespace && s.Name == ref.Name {
			return s
		}
	}
	return nil
}

// selects reports whether a Service selector matches an endpoint's pod
// labels (its k8s identity labels).
func selects(sel map[string]string, labels identity.Labels) bool {
	for k, v := range sel {
		if !slices.Contains(labels, identity.Label{Source: identity.SourceK8s, Key: k, Value: v}) {
			return false
		}
	}
	return true
}

// targetPort is the pod port a service port sends to (0: none).
func targetPort(sp corev1.ServicePort, ep *policy.Endpoint) uint16 {
	switch {
	case sp.TargetPort.StrVal != "":
		for _, cp := range ep.Ports {
			if cp.Name == strings.ToLower(sp.TargetPort.StrVal) && cp.Proto == resolved.ProtoTCP {
				return cp.Port
			}
		}
		return 0
	case sp.TargetPort.IntVal != 0:
		return uint16(sp.TargetPort.IntVal)
	}
	return uint16(sp.Port)
}

// withRateLimitRedirects returns pol with the rate-limited ports of its
// ingress sent to the proxy where L3/L4 lets traffic in: each Allow entry
// covering such a port gains a Redirect entry for that port with every
// request allowed (the proxy applies the bucket); an ingress that is not
// enforced gains one for every peer. Deny entries still win; Redirect
// entries with L7 rules keep them. pol itself is not modified.
func withRateLimitRedirects(pol *resolved.EndpointPolicy, ports map[uint16]rlTarget) *resolved.EndpointPolicy {
	cp := *pol
	in := cp.Ingress
	in.Entries = slices.Clone(in.Entries)
	keys := make([]uint16, 0, len(ports))
	for p := range ports {
		keys = append(keys, p)
	}
	slices.Sort(keys)
	for _, port := range keys {
		origin := ports[port].origin
		if !in.Enforced {
			in.Entries = append(in.Entries, resolved.Entry{Peer: rlAllPeers, Proto: resolved.ProtoTCP, PortLo: port, PortHi: port,
				Verdict: resolved.Redirect, L7: allowAllHTTP, Origin: []resolved.PolicyRef{origin}})
			continue
		}
		for _, e := range pol.Ingress.Entries {
			if e.Verdict != resolved.Allow || !e.MatchesPort(resolved.ProtoTCP, port) {
				continue
			}
			in.Entries = append(in.Entries, resolved.Entry{Peer: e.Peer, Proto: resolved.ProtoTCP, PortLo: port, PortHi: port,
				Verdict: resolved.Redirect, L7: allowAllHTTP, Origin: append(slices.Clone(e.Origin), origin)})
		}
	}
	cp.Ingress = in
	return &cp
}

// rlSelectors adds rlAllPeers (every identity) to a selector set.
type rlSelectors struct {
	resolved.SelectorSet
	all []identity.NumericIdentity // sorted
}

func (s rlSelectors) Selects(sel resolved.SelectorID, id identity.NumericIdentity) bool {
	if sel == rlAllPeers {
		return true
	}
	return s.SelectorSet.Selects(sel, id)
}

func (s rlSelectors) Identities(sel resolved.SelectorID) []identity.NumericIdentity {
	if sel == rlAllPeers {
		return s.all
	}
	return s.SelectorSet.Identities(sel)
}

// RateLimitFor implements httpproxy.RateLimitSource: the bucket of the
// flow's destination endpoint and port, if a CiliumEnvoyConfig limits it.
func (p *l7Policies) RateLimitFor(f proxy.Flow) *httpproxy.TokenBucket {
	v := p.v.Load()
	if v == nil || v.limits == nil {
		return nil
	}
	key, ok := v.snap.IPCache.Endpoint(f.Dst.Addr().Unmap())
	if !ok {
		return nil
	}
	return v.limits[key][f.Dst.Port()].bucket
}
