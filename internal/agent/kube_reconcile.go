package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/cni"
	"github.com/bulwark-net/bulwark/internal/datapath"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/k8s/source"
	"github.com/bulwark-net/bulwark/internal/k8s/status"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/api"
)

// kubeState is what the last reconciles applied, so that each applies only
// what changed since. Guarded by the agent's mu.
type kubeState struct {
	objs       map[string]appliedObject // by source.Key
	pods       map[string]string        // pod key → resourceVersion|local addresses
	epIdent    map[uint32]identity.NumericIdentity
	refused    map[string]string         // object key → the version the engine refused
	reported   map[status.PolicyRef]bool // cilium policies given a status
	enforcedAt map[string]enforcedAt     // policy key → revision its current version took effect
	syncErr    error                     // the last reconcile's datapath error
	conf       []byte                    // the CNI configuration written
	last       *source.State
	errs       map[string]error // policy key → why it is not (fully) enforced
	first      bool             // the first reconcile has run
}

type enforcedAt struct {
	rv  string
	rev uint64
}

type appliedObject struct {
	rv  string
	ref policy.ObjectRef
}

func newKubeState() *kubeState {
	return &kubeState{objs: map[string]appliedObject{}, refused: map[string]string{}, pods: map[string]string{}, epIdent: map[uint32]identity.NumericIdentity{},
		reported: map[status.PolicyRef]bool{}, enforcedAt: map[string]enforcedAt{}, errs: map[string]error{}}
}

func (s *kubeState) forgetPod(key string) { delete(s.pods, key) }

func refKind(kind string) string {
	switch kind {
	case "NetworkPolicy":
		return policy.KindNetworkPolicy
	case api.KindCNP:
		return policy.KindCNP
	case api.KindCCNP:
		return policy.KindCCNP
	}
	return kind
}

// reconcile takes the informers' state and converges the node to it.
func (k *kubeAgent) reconcile(ctx context.Context) {
	start := time.Now()
	st := k.src.State()
	a := k.Agent
	a.mu.Lock()
	err := k.reconcileLocked(st)
	a.log.Debug("reconciled", "took", time.Since(start), "revision", k.node.dp.Revision(), "pods", len(st.Pods), "objects", len(st.Objects.Objects))
	var report []policyStatus
	var gone []status.PolicyRef
	if k.status != nil {
		report, gone = k.statusesLocked(st, k.k.syncErr)
	}
	a.mu.Unlock()
	if err != nil {
		a.recordError(err)
	} else {
		a.clearErrors()
	}
	k.readyOnce.Do(func() { close(k.ready) })
	for _, r := range report {
		k.status.Set(r.ref, r.st)
	}
	for _, ref := range gone {
		k.status.Forget(ref)
	}
}

// reconcileLocked applies st: objects that changed (one by one, so that
// one the engine refuses is reported and leaves what was enforced for it
// in place), pods, this node's endpoints, the datapath, the routes and
// the CNI configuration. a.mu held.
func (k *kubeAgent) reconcileLocked(st *source.State) error {
	n := k.node
	ks := k.k
	var errs []error
	prevErrs := ks.errs
	ks.errs = map[string]error{}
	for _, pe := range st.Errors {
		ks.errs[source.Key(pe.Kind, pe.Namespace, pe.Name)] = pe.Err
	}
	// 1. Namespaces, services and policies that changed.
	for _, o := range st.Objects.Objects {
		key := source.Key(o.Kind, o.Namespace, o.Name)
		rv := st.Versions[key]
		if cur, ok := ks.objs[key]; ok && cur.rv == rv {
			continue
		}
		if ks.refused[key] == rv && prevErrs[key] != nil {
			ks.errs[key] = prevErrs[key] // this version was refused already
			continue
		}
		if _, err := n.repo.Upsert(o.Obj); err != nil {
			// The previous version (if any) stays enforced.
			ks.errs[key] = err
			ks.refused[key] = rv
			n.log.Error("object not applied", "object", key, "err", err)
			continue
		}
		delete(ks.refused, key)
		ks.objs[key] = appliedObject{rv: rv, ref: policy.ObjectRef{Kind: refKind(o.Kind), Namespace: o.Namespace, Name: o.Name}}
	}
	// 2. Pods: every pod of the cluster (identities, ipcache); this
	// node's with the addresses their CNI ADD gave.
	seen := make(map[string]bool, len(st.Pods))
	for _, p := range st.Pods {
		key := podKey(p.Namespace, p.Name)
		seen[key] = true
		obj, fp := p, p.ResourceVersion
		if ep, ok := k.eps.get(key); ok {
			obj = withIPs(p, ep.IPs)
			fp += "|" + strings.Join(ep.IPs, ",")
		}
		if ks.pods[key] == fp {
			continue
		}
		if _, err := n.repo.Upsert(obj); err != nil {
			errs = append(errs, err)
			continue
		}
		ks.pods[key] = fp
	}
	for key := range ks.pods {
		if !seen[key] {
			ns, name := splitKey(key)
			if _, err := n.repo.Delete(policy.ObjectRef{Kind: "Pod", Namespace: ns, Name: name}); err != nil {
				errs = append(errs, err)
			}
			delete(ks.pods, key)
		}
	}
	// 3. Objects gone from the API server. One that is there but does
	// not decode keeps what was enforced for it.
	var gone []string
	for key := range ks.objs {
		if _, ok := st.Versions[key]; ok {
			continue
		}
		if _, bad := ks.errs[key]; bad {
			continue
		}
		gone = append(gone, key)
	}
	sort.Strings(gone)
	for _, key := range gone {
		if _, err := n.repo.Delete(ks.objs[key].ref); err != nil {
			errs = append(errs, err)
		}
		delete(ks.objs, key)
		delete(ks.refused, key)
	}
	for key := range ks.refused {
		if _, ok := st.Versions[key]; !ok {
			delete(ks.refused, key)
		}
	}
	// 4. The node: its address (the host identity), routes, CNI config.
	errs = append(errs, k.applyNodesLocked(st)...)
	// 5. This node's endpoints: identities as resolved, then the maps.
	if !ks.first {
		errs = append(errs, k.dropVanishedLocked()...)
	}
	snap := n.repo.Snapshot()
	for _, ep := range k.eps.list() {
		ident := identity.Init
		if e := snap.Endpoints[endpointKeyOf(ep.Namespace, ep.Name)]; e != nil {
			ident = e.Identity
		}
		if cur, ok := ks.epIdent[ep.EndpointID]; ok && cur == ident && ks.first {
			continue
		}
		if err := n.dp.AttachEndpoint(datapath.Endpoint{ID: ep.EndpointID, IfIndex: ep.HostIfIndex, NetNSPath: n.nodeNetns, Identity: ident}); err != nil {
			errs = append(errs, fmt.Errorf("endpoint %s: %w", ep.podKey(), err))
			continue
		}
		ks.epIdent[ep.EndpointID] = ident
		n.mu.Lock()
		n.attached[ep.EndpointID] = ep.podKey()
		n.mu.Unlock()
	}
	ks.syncErr = n.syncDatapath()
	if ks.syncErr != nil {
		errs = append(errs, ks.syncErr)
	}
	if err := k.syncServicesLocked(st); err != nil {
		errs = append(errs, err)
	}
	if !ks.first {
		errs = append(errs, n.detachStale()...)
	}
	ks.first = true
	ks.last = st
	n.mu.Lock()
	n.lastSet = st.Objects
	n.policies = len(st.Objects.NetworkPolicies) + len(st.Objects.CNPs) + len(st.Objects.CCNPs)
	n.mu.Unlock()
	for key, err := range ks.errs {
		errs = append(errs, fmt.Errorf("%s: %w", key, err))
	}
	return errors.Join(errs...)
}

// withIPs is p with the addresses its CNI ADD gave.
func withIPs(p *corev1.Pod, ips []string) *corev1.Pod {
	if len(ips) == 0 {
		return p
	}
	c := p.DeepCopy()
	c.Status.PodIP = ips[0]
	c.Status.PodIPs = nil
	for _, ip := range ips {
		c.Status.PodIPs = append(c.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	return c
}

// upsertLocalPod puts the pod of a new endpoint into the repository with
// the endpoint's addresses, when the informer knows it. a.mu held.
func (k *kubeAgent) upsertLocalPod(ep *cniEndpoint) error {
	p, ok := k.src.Pod(ep.Namespace, ep.Name)
	if !ok || p.Spec.HostNetwork {
		return nil
	}
	if _, err := k.node.repo.Upsert(withIPs(p, ep.IPs)); err != nil {
		return err
	}
	k.k.pods[ep.podKey()] = p.ResourceVersion + "|" + strings.Join(ep.IPs, ",")
	return nil
}

// dropVanishedLocked forgets adopted endpoints whose host veth is gone
// (the runtime deleted the pod while no agent ran).
func (k *kubeAgent) dropVanishedLocked() []error {
	var errs []error
	for _, ep := range k.eps.list() {
		check := *ep
		check.HostIfIndex = 0
		err := k.resolveHostLink(&check)
		if err == nil && check.HostIfIndex == ep.HostIfIndex {
			continue
		}
		k.log.Info("endpoint's interface is gone; releasing it", "pod", ep.podKey(), "ifindex", ep.HostIfIndex)
		if err := k.detachLocked(ep); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// nodeAddrs returns a node's pod CIDRs and InternalIPs.
func nodeAddrs(nd *corev1.Node) (cidrs []netip.Prefix, ips []netip.Addr) {
	all := nd.Spec.PodCIDRs
	if len(all) == 0 && nd.Spec.PodCIDR != "" {
		all = []string{nd.Spec.PodCIDR}
	}
	for _, c := range all {
		if p, err := netip.ParsePrefix(c); err == nil {
			cidrs = append(cidrs, p.Masked())
		}
	}
	for _, a := range nd.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			ips = append(ips, ip.Unmap())
		}
	}
	return cidrs, ips
}

// applyNodesLocked takes this node's address and pod CIDRs (the CNI
// configuration) and routes the other nodes' pod CIDRs.
func (k *kubeAgent) applyNodesLocked(st *source.State) []error {
	var errs []error
	var routes []nodeRoute
	var remote []netip.Addr
	for _, nd := range st.Nodes {
		cidrs, ips := nodeAddrs(nd)
		if nd.Name == k.kopts.NodeName {
			for _, ip := range ips {
				if ip.Is4() || !k.node.nodeIP.IsValid() {
					k.node.nodeIP = ip
				}
			}
			if err := k.writeCNIConf(cidrs); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		remote = append(remote, ips...)
		for _, c := range cidrs {
			for _, ip := range ips {
				if ip.Is4() == c.Addr().Is4() {
					routes = append(routes, nodeRoute{Dst: c, Via: ip, Node: nd.Name})
					break
				}
			}
		}
	}
	slices.SortFunc(remote, netip.Addr.Compare)
	remote = slices.Compact(remote)
	if !slices.Equal(remote, k.node.remoteNodes) {
		k.node.remoteNodes = remote
	}
	if k.kopts.NativeRouting {
		if err := k.inNode(func() error { return syncNodeRoutes(routes) }); err != nil {
			errs = append(errs, fmt.Errorf("native routes: %w", err))
		}
	}
	return errs
}

// confListFile is where the CNI configuration goes.
func (k *kubeAgent) confListFile() string {
	c := k.kopts.CNIConf
	if strings.HasSuffix(c, ".conflist") || strings.HasSuffix(c, ".conf") {
		return c
	}
	return filepath.Join(c, ConfListName)
}

// writeCNIConf writes the CNI configuration once the node has pod CIDRs
// (again when they change).
func (k *kubeAgent) writeCNIConf(cidrs []netip.Prefix) error {
	if k.kopts.CNIConf == "" || len(cidrs) == 0 {
		return nil
	}
	b, err := cni.ConfList(cni.ConfOptions{Mode: k.kopts.CNIMode, PodCIDRs: cidrs, AgentSocket: k.kopts.Paths.Socket, IPAMDataDir: k.kopts.IPAMDataDir})
	if err != nil {
		return err
	}
	if bytes.Equal(b, k.k.conf) {
		return nil
	}
	file := k.confListFile()
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	if err := writeFileAtomic(file, append(b, '\n')); err != nil {
		return fmt.Errorf("write CNI configuration: %w", err)
	}
	os.Chmod(file, 0o644)
	k.k.conf = b
	k.log.Info("CNI configuration written", "file", file, "podCIDRs", fmt.Sprint(cidrs))
	return nil
}

type policyStatus struct {
	ref status.PolicyRef
	st  status.Status
}

// statusesLocked is each cilium.io policy's status on this node: invalid
// (with the decoder's or the engine's reason), or enforcing at the
// revision that implemented its current version; syncErr, when the
// datapath refused the last sync, makes them not enforcing. Policies
// reported before and now gone are returned in gone.
func (k *kubeAgent) statusesLocked(st *source.State, syncErr error) (out []policyStatus, gone []status.PolicyRef) {
	rev := k.node.dp.Revision()
	now := map[status.PolicyRef]bool{}
	add := func(ref status.PolicyRef, key string) {
		now[ref] = true
		var s status.Status
		switch err := k.k.errs[key]; {
		case err != nil:
			s = status.Invalid(err)
		case syncErr != nil:
			s = status.Status{OK: true, Error: "not loaded into the datapath: " + syncErr.Error()}
		default:
			rv := st.Versions[key]
			at, ok := k.k.enforcedAt[key]
			if !ok || at.rv != rv {
				at = enforcedAt{rv: rv, rev: rev}
				k.k.enforcedAt[key] = at
			}
			s = status.Enforcing(at.rev)
		}
		out = append(out, policyStatus{ref, s})
	}
	for _, p := range st.Objects.CNPs {
		add(status.PolicyRef{Kind: api.KindCNP, Namespace: p.Namespace, Name: p.Name, UID: p.UID}, source.Key(api.KindCNP, p.Namespace, p.Name))
	}
	for _, p := range st.Objects.CCNPs {
		add(status.PolicyRef{Kind: api.KindCCNP, Name: p.Name, UID: p.UID}, source.Key(api.KindCCNP, "", p.Name))
	}
	for _, pe := range st.Errors {
		add(status.PolicyRef{Kind: pe.Kind, Namespace: pe.Namespace, Name: pe.Name, UID: pe.UID}, source.Key(pe.Kind, pe.Namespace, pe.Name))
	}
	for ref := range k.k.reported {
		if !now[ref] {
			gone = append(gone, ref)
			delete(k.k.enforcedAt, source.Key(ref.Kind, ref.Namespace, ref.Name))
		}
	}
	k.k.reported = now
	return out, gone
}

// Apply implements agentapi.Backend: in Kubernetes mode the API server
// holds the objects.
func (k *kubeAgent) Apply(context.Context, agentapi.ApplyRequest) (agentapi.ApplyResponse, error) {
	return agentapi.ApplyResponse{}, &agentapi.UserError{Err: errors.New("this agent runs in Kubernetes mode: apply objects to the API server (kubectl apply)")}
}

// Delete implements agentapi.Backend (see Apply).
func (k *kubeAgent) Delete(context.Context, agentapi.ApplyRequest) (agentapi.ApplyResponse, error) {
	return agentapi.ApplyResponse{}, &agentapi.UserError{Err: errors.New("this agent runs in Kubernetes mode: delete objects through the API server (kubectl delete)")}
}
