package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/datapath"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
)

// cniEndpoint is one pod interface the CNI plugin attached: what the agent
// needs to enforce it and to adopt it after a restart.
type cniEndpoint struct {
	ContainerID string   `json:"containerID"`
	IfName      string   `json:"ifName"`
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	UID         string   `json:"uid,omitempty"`
	HostIfName  string   `json:"hostIfName,omitempty"`
	HostIfIndex int      `json:"hostIfIndex"`
	IPs         []string `json:"ips,omitempty"` // addresses, without prefix length
	EndpointID  uint32   `json:"endpointID"`
}

func (e *cniEndpoint) podKey() string { return podKey(e.Namespace, e.Name) }

// cniEndpoints is the persisted set of attached endpoints, by pod. Safe for
// concurrent use.
type cniEndpoints struct {
	file  string
	mu    sync.Mutex
	byPod map[string]*cniEndpoint
}

func openCNIEndpoints(file string) (*cniEndpoints, error) {
	s := &cniEndpoints{file: file, byPod: map[string]*cniEndpoint{}}
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read CNI endpoints: %w", err)
	}
	var list []*cniEndpoint
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("CNI endpoints %s: %w", file, err)
	}
	for _, e := range list {
		s.byPod[e.podKey()] = e
	}
	return s, nil
}

func (s *cniEndpoints) list() []*cniEndpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*cniEndpoint, 0, len(s.byPod))
	for _, e := range s.byPod {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].podKey() < out[j].podKey() })
	return out
}

func (s *cniEndpoints) get(pod string) (*cniEndpoint, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.byPod[pod]
	return e, ok
}

// find returns the endpoint of a container's interface.
func (s *cniEndpoints) find(containerID, ifName string) (*cniEndpoint, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.byPod {
		if e.ContainerID == containerID && (ifName == "" || e.IfName == ifName) {
			return e, true
		}
	}
	return nil, false
}

func (s *cniEndpoints) put(e *cniEndpoint) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, had := s.byPod[e.podKey()]
	s.byPod[e.podKey()] = e
	if err := s.saveLocked(); err != nil {
		if had {
			s.byPod[e.podKey()] = old
		} else {
			delete(s.byPod, e.podKey())
		}
		return err
	}
	return nil
}

func (s *cniEndpoints) remove(pod string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.byPod, pod)
	return s.saveLocked()
}

func (s *cniEndpoints) saveLocked() error {
	list := make([]*cniEndpoint, 0, len(s.byPod))
	for _, e := range s.byPod {
		list = append(list, e)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].podKey() < list[j].podKey() })
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(s.file, b); err != nil {
		return fmt.Errorf("persist CNI endpoints: %w", err)
	}
	return nil
}

// podWait bounds how long ADD waits for the informer to know a pod before
// attaching it with no policy (drop all until the pod is known).
const podWait = 5 * time.Second

// EndpointAdd implements agentapi.CNIBackend: the pod's host veth gets the
// datapath's programs, and the call returns once the endpoint's policy is
// loaded, or, for a pod the informer does not know yet, with the endpoint
// dropping everything until it does (PolicyLoaded false).
func (k *kubeAgent) EndpointAdd(ctx context.Context, req agentapi.CNIEndpointRequest) (agentapi.CNIEndpointResponse, error) {
	var resp agentapi.CNIEndpointResponse
	if req.PodNamespace == "" || req.PodName == "" || req.ContainerID == "" {
		return resp, &agentapi.UserError{Err: errors.New("CNI ADD: containerID, podNamespace and podName are required")}
	}
	if err := k.waitReady(ctx); err != nil {
		return resp, err
	}
	ep := &cniEndpoint{ContainerID: req.ContainerID, IfName: req.IfName, Namespace: req.PodNamespace, Name: req.PodName,
		UID: req.PodUID, HostIfName: req.HostIfName, HostIfIndex: req.HostIfIndex}
	for _, s := range req.IPs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return resp, &agentapi.UserError{Err: fmt.Errorf("CNI ADD %s: ips: %q is not an address", ep.podKey(), s)}
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		ep.IPs = append(ep.IPs, p.Addr().Unmap().String())
	}
	if err := k.resolveHostLink(ep); err != nil {
		return resp, &agentapi.UserError{Err: fmt.Errorf("CNI ADD %s: %w", ep.podKey(), err)}
	}
	// The pod normally exists before the runtime creates its sandbox;
	// give the informer a moment to have it, without holding the lock.
	wait, cancel := context.WithTimeout(ctx, podWait)
	for {
		if p, ok := k.src.Pod(ep.Namespace, ep.Name); ok && (ep.UID == "" || string(p.UID) == ep.UID) {
			break
		}
		select {
		case <-wait.Done():
		case <-time.After(20 * time.Millisecond):
			continue
		}
		break
	}
	cancel()

	a := k.Agent
	a.mu.Lock()
	defer a.mu.Unlock()
	n := a.node
	key := ep.podKey()
	if old, ok := k.eps.get(key); ok && (old.ContainerID != ep.ContainerID || old.HostIfIndex != ep.HostIfIndex) {
		// A new sandbox of the same pod: the old one's interface is gone
		// or going; its endpoint is replaced.
		a.log.Info("replacing endpoint of a previous sandbox", "pod", key, "old", old.ContainerID)
		if err := k.detachLocked(old); err != nil {
			return resp, err
		}
	}
	id, err := n.ids.assign(key)
	if err != nil {
		return resp, err
	}
	ep.EndpointID = id
	if err := k.eps.put(ep); err != nil {
		n.ids.release(key)
		return resp, err
	}
	fail := func(err error) (agentapi.CNIEndpointResponse, error) {
		_ = k.detachLocked(ep)
		return agentapi.CNIEndpointResponse{}, err
	}
	// The pod, with the addresses the plugin gave it (the API server
	// learns them only after ADD returns).
	if err := k.upsertLocalPod(ep); err != nil {
		return fail(fmt.Errorf("CNI ADD %s: %w", key, err))
	}
	ident := identity.Init // labels unknown yet: no policy, drop all
	if e := n.repo.Snapshot().Endpoints[endpointKeyOf(ep.Namespace, ep.Name)]; e != nil {
		ident = e.Identity
	}
	if err := n.dp.AttachEndpoint(datapath.Endpoint{ID: id, IfIndex: ep.HostIfIndex, NetNSPath: n.nodeNetns, Identity: ident}); err != nil {
		// A stale record under this ID (an interface that vanished):
		// drop it and retry once, as the sandbox does.
		_ = n.dp.DetachEndpoint(id)
		if err := n.dp.AttachEndpoint(datapath.Endpoint{ID: id, IfIndex: ep.HostIfIndex, NetNSPath: n.nodeNetns, Identity: ident}); err != nil {
			return fail(fmt.Errorf("CNI ADD %s: %w", key, err))
		}
	}
	n.mu.Lock()
	n.attached[id] = key
	n.mu.Unlock()
	k.k.epIdent[id] = ident
	if err := n.syncDatapath(); err != nil {
		return fail(fmt.Errorf("CNI ADD %s: %w", key, err))
	}
	n.mu.Lock()
	loaded := n.loaded[id]
	n.mu.Unlock()
	a.log.Info("endpoint attached", "pod", key, "endpoint", id, "identity", ident, "policyLoaded", loaded, "ifindex", ep.HostIfIndex)
	return agentapi.CNIEndpointResponse{EndpointID: id, Identity: uint32(ident), PolicyLoaded: loaded}, nil
}

// resolveHostLink fills the host veth's index from its name (or checks
// the pair) in the node's netns.
func (k *kubeAgent) resolveHostLink(ep *cniEndpoint) error {
	if ep.HostIfName == "" && ep.HostIfIndex <= 0 {
		return errors.New("hostIfName or hostIfIndex is required")
	}
	return k.inNode(func() error {
		var l netlink.Link
		var err error
		if ep.HostIfIndex > 0 {
			l, err = netlink.LinkByIndex(ep.HostIfIndex)
		} else {
			l, err = netlink.LinkByName(ep.HostIfName)
		}
		if err != nil {
			return fmt.Errorf("host interface %q (index %d): %w", ep.HostIfName, ep.HostIfIndex, err)
		}
		if ep.HostIfName != "" && l.Attrs().Name != ep.HostIfName {
			return fmt.Errorf("host interface index %d is %q, not %q", ep.HostIfIndex, l.Attrs().Name, ep.HostIfName)
		}
		ep.HostIfIndex, ep.HostIfName = l.Attrs().Index, l.Attrs().Name
		return nil
	})
}

func (k *kubeAgent) inNode(fn func() error) error {
	if k.kopts.NodeNetns == "" {
		return fn()
	}
	return netns.Do(k.kopts.NodeNetns, fn)
}

// detachLocked takes an endpoint out: its pod's policy and addresses
// first, then the programs, then the record. a.mu held.
func (k *kubeAgent) detachLocked(ep *cniEndpoint) error {
	n := k.node
	key := ep.podKey()
	if n.fqdn != nil {
		n.fqdn.forgetEndpoint(ep.EndpointID)
	}
	n.mu.Lock()
	delete(n.attached, ep.EndpointID)
	n.mu.Unlock()
	// The pod stays known with what the API server says of it (its
	// addresses leave with the local ones).
	k.k.forgetPod(key)
	if _, err := n.repo.Delete(policy.ObjectRef{Kind: "Pod", Namespace: ep.Namespace, Name: ep.Name}); err != nil {
		n.log.Debug("pod not in repository", "pod", key, "err", err)
	}
	var errs []error
	if err := n.syncDatapath(); err != nil {
		errs = append(errs, err)
	}
	delete(k.k.epIdent, ep.EndpointID)
	if err := n.dp.DetachEndpoint(ep.EndpointID); err != nil {
		errs = append(errs, fmt.Errorf("detach endpoint %d: %w", ep.EndpointID, err))
	}
	if err := k.eps.remove(key); err != nil {
		errs = append(errs, err)
	}
	if err := n.ids.release(key); err != nil {
		errs = append(errs, err)
	}
	n.publishEventView()
	return errors.Join(errs...)
}

// EndpointDel implements agentapi.CNIBackend; idempotent.
func (k *kubeAgent) EndpointDel(ctx context.Context, req agentapi.CNIEndpointRequest) error {
	a := k.Agent
	a.mu.Lock()
	defer a.mu.Unlock()
	ep, ok := k.eps.find(req.ContainerID, req.IfName)
	if !ok {
		return nil
	}
	if err := k.detachLocked(ep); err != nil {
		return fmt.Errorf("CNI DEL %s: %w", ep.podKey(), err)
	}
	a.log.Info("endpoint released", "pod", ep.podKey(), "endpoint", ep.EndpointID)
	// The pod may still exist (a sandbox restart): the next reconcile
	// knows it again from the informer.
	k.src.Poke()
	return nil
}

// EndpointCheck implements agentapi.CNIBackend.
func (k *kubeAgent) EndpointCheck(ctx context.Context, req agentapi.CNIEndpointRequest) error {
	ep, ok := k.eps.find(req.ContainerID, req.IfName)
	if !ok {
		return fmt.Errorf("CNI CHECK: no endpoint for container %s interface %s", req.ContainerID, req.IfName)
	}
	if req.HostIfIndex > 0 && req.HostIfIndex != ep.HostIfIndex {
		return fmt.Errorf("CNI CHECK %s: attached to ifindex %d, not %d", ep.podKey(), ep.HostIfIndex, req.HostIfIndex)
	}
	for _, d := range k.node.dp.Endpoints() {
		if d.ID == ep.EndpointID {
			if d.IfIndex != ep.HostIfIndex {
				return fmt.Errorf("CNI CHECK %s: datapath has endpoint %d on ifindex %d, not %d", ep.podKey(), d.ID, d.IfIndex, ep.HostIfIndex)
			}
			return nil
		}
	}
	return fmt.Errorf("CNI CHECK %s: endpoint %d is not attached", ep.podKey(), ep.EndpointID)
}

// CNIStatus implements agentapi.CNIBackend: ready once the informers
// synced and the first reconcile loaded the datapath.
func (k *kubeAgent) CNIStatus(context.Context) (agentapi.CNIStatusResponse, error) {
	if !k.isReady() {
		return agentapi.CNIStatusResponse{Ready: false, Reason: "informers not synced yet"}, nil
	}
	return agentapi.CNIStatusResponse{Ready: true}, nil
}
