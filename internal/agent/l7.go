package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/proxy"
	dnsproxy "github.com/bulwark-net/bulwark/internal/proxy/dns"
	httpproxy "github.com/bulwark-net/bulwark/internal/proxy/http"
	"github.com/bulwark-net/bulwark/internal/proxy/tproxy"
)

// l7Proxies are the agent's L7 proxies and their transparent sockets in
// the node's namespace: the datapath assigns the connections of Redirect
// entries to them (see datapath's package doc).
//
// Invariant (rule zero): a Redirect entry gets the port of a proxy that
// enforces its kind of rules, or port 0, which the datapath drops. While
// the agent is down nothing listens on the ports and redirected packets
// drop; a restarted agent listens again and re-syncs the new ports.
type l7Proxies struct {
	log      *slog.Logger
	policies *l7Policies
	ln       *tproxy.Listener
	dialer   *tproxy.Dialer
	http     *httpproxy.Proxy
	dns      *dnsServer // nil when it could not start: DNS redirects drop
	// dnsPort is the DNS proxy's port, 0 while none runs (DNS rules then
	// drop); setDNSPort sets it before the next sync.
	dnsPort atomic.Uint32
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// l7Options configure startL7.
type l7Options struct {
	NodeNetns  string
	Record     proxy.Recorder
	Registerer prometheus.Registerer
	// Learn is the FQDN hook the DNS proxy calls before releasing an
	// answer; DNSDeniedRcode answers denied queries (0: REFUSED).
	Learn          dnsproxy.LearnFunc
	DNSDeniedRcode int
}

// startL7 installs the node's policy routing for redirected packets, opens
// the HTTP proxy's transparent listener and serves it.
func startL7(log *slog.Logger, o l7Options) (*l7Proxies, error) {
	ipv6, err := tproxy.EnsureRouting(o.NodeNetns)
	if err != nil {
		return nil, err
	}
	l := &l7Proxies{log: log, policies: &l7Policies{}}
	if l.ln, err = tproxy.Listen(tproxy.Options{NetNS: o.NodeNetns, Identities: l.policies.identity, NoIPv6: !ipv6}); err != nil {
		return nil, err
	}
	if l.dialer, err = tproxy.NewDialer(o.NodeNetns); err != nil {
		l.ln.Close()
		return nil, err
	}
	l.http, err = httpproxy.New(httpproxy.Options{
		Policies: l.policies, Dialer: l.dialer, Record: o.Record, Registerer: o.Registerer, RateLimits: l.policies,
	})
	if err != nil {
		l.ln.Close()
		l.dialer.Close()
		return nil, fmt.Errorf("start HTTP proxy: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	l.wg.Add(1)
	go l.serve(ctx)
	if l.dns, err = startDNS(log, l, o, !ipv6); err != nil {
		// Not fatal: DNS redirects get port 0 and drop (rule zero).
		log.Error("DNS proxy not started: DNS rules drop their traffic", "err", err)
	} else {
		l.setDNSPort(l.dns.port)
	}
	log.Info("L7 proxy listening", "http-port", l.ln.Port())
	return l, nil
}

func (l *l7Proxies) serve(ctx context.Context) {
	defer l.wg.Done()
	for {
		c, f, err := l.ln.Accept()
		if err != nil {
			if !errors.Is(err, context.Canceled) && ctx.Err() == nil {
				l.log.Info("L7 proxy stops accepting", "err", err)
			}
			return
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.http.ServeConn(ctx, c, f)
		}()
	}
}

// proxyPort is the datapath's ProxyPortFunc: HTTP rules (and a redirect
// without rules of another kind) go to the HTTP proxy; DNS rules to the
// DNS proxy (0 while none runs: the datapath drops them).
func (l *l7Proxies) proxyPort(_ uint32, _ resolved.Direction, e *resolved.Entry) uint16 {
	if l == nil || e.L7 == nil {
		return 0
	}
	if len(e.L7.DNS) > 0 && len(e.L7.HTTP) == 0 {
		return uint16(l.dnsPort.Load())
	}
	return l.ln.Port()
}

// setDNSPort tells the datapath's next sync where the DNS proxy listens.
func (l *l7Proxies) setDNSPort(port uint16) { l.dnsPort.Store(uint32(port)) }

func (l *l7Proxies) close() {
	if l == nil {
		return
	}
	l.ln.Close()
	l.dns.close()
	l.cancel()
	l.http.Close()
	l.wg.Wait()
	l.dialer.Close()
}

// l7Policies is the proxies' proxy.PolicySource: the rules of a flow from
// the policy state the datapath holds (published after every sync).
type l7Policies struct {
	v atomic.Pointer[l7View]
}

// l7View is one synced policy state. Immutable but for its stage cache.
type l7View struct {
	snap     *policy.Snapshot
	ids      map[policy.EndpointKey]uint32 // attached endpoints
	hostAddr map[netip.Addr]bool           // the node's addresses (reserved:host)
	// policies and selectors are what the datapath was given: the
	// snapshot's, with the rate-limited ports redirected (ratelimit.go).
	policies  map[uint32]*resolved.EndpointPolicy
	selectors resolved.SelectorSet
	limits    rlTargets

	mu     sync.Mutex
	stages map[stageKey]stageResult
}

type stageKey struct {
	ep    uint32
	dir   resolved.Direction
	peer  identity.NumericIdentity
	proto resolved.Protocol
	port  uint16
}

type stageResult struct {
	verdict resolved.Verdict
	stage   proxy.Stage
}

// maxStages bounds a view's cache (flows of distinct peers and ports).
const maxStages = 65536

func (p *l7Policies) publish(v *l7View) { p.v.Store(v) }

// identity resolves an address as the datapath's ipcache does.
func (p *l7Policies) identity(a netip.Addr) identity.NumericIdentity {
	v := p.v.Load()
	if v == nil {
		return identity.World
	}
	a = a.Unmap()
	if v.hostAddr[a] {
		return identity.Host
	}
	return v.snap.IPCache.Lookup(a)
}

// PolicyFor gives the flow's Stages: the source's egress and the
// destination's ingress where either redirects it. A side that now denies
// the flow, or no redirect left, refuses it (ok false).
func (p *l7Policies) PolicyFor(f proxy.Flow) (proxy.Policy, bool) {
	v := p.v.Load()
	if v == nil {
		return proxy.Policy{}, false
	}
	var pol proxy.Policy
	for _, side := range []struct {
		addr netip.Addr
		dir  resolved.Direction
		peer identity.NumericIdentity
	}{{f.Src.Addr(), resolved.Egress, f.DstIdentity}, {f.Dst.Addr(), resolved.Ingress, f.SrcIdentity}} {
		key, ok := v.snap.IPCache.Endpoint(side.addr.Unmap())
		if !ok {
			continue
		}
		id, attached := v.ids[key]
		epPol := v.policies[id]
		if !attached || epPol == nil {
			return proxy.Policy{}, false // not enforced yet: fail closed
		}
		r := v.stage(stageKey{ep: id, dir: side.dir, peer: side.peer, proto: f.Protocol, port: f.Dst.Port()}, epPol)
		switch r.verdict {
		case resolved.Deny:
			return proxy.Policy{}, false
		case resolved.Redirect:
			pol.Stages = append(pol.Stages, r.stage)
		}
	}
	return pol, len(pol.Stages) > 0
}

// allowAllHTTP is the rule set of a redirect that a plain allow also
// matches: every request is allowed (Cilium's L7 wildcard).
var allowAllHTTP = &resolved.L7Rules{HTTP: []resolved.HTTPRule{{}}}

func (v *l7View) stage(k stageKey, pol *resolved.EndpointPolicy) stageResult {
	v.mu.Lock()
	defer v.mu.Unlock()
	if r, ok := v.stages[k]; ok {
		return r
	}
	dp := pol.Dir(k.dir)
	d := dp.Lookup(v.selectors, k.peer, k.proto, k.port)
	r := stageResult{verdict: d.Verdict}
	if d.Verdict == resolved.Redirect {
		rules := d.L7
		if d.AllowAllL7 || rules == nil {
			rules = allowAllHTTP
		}
		var names []string
		for _, ref := range d.Policies(dp) {
			names = append(names, ref.String())
		}
		r.stage = proxy.Stage{EndpointID: k.ep, Direction: k.dir, Rules: rules, Policies: names}
	}
	if len(v.stages) >= maxStages {
		clear(v.stages)
	}
	v.stages[k] = r
	return r
}

// recordL7 takes the proxies' Records (it must not block): each becomes a
// Hubble L7 flow, and the observer's metrics sink counts it (requests by
// outcome, cilium_proxy_upstream_reply_seconds).
func (n *node) recordL7(r proxy.Record) {
	if p := n.events; p != nil && p.obs != nil {
		p.obs.HandleL7(r)
	}
}
