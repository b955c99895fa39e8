package agent

// Kubernetes mode: the same node (policy repository, datapath, observer, L7
// proxies) as the sandbox, fed by the API server's informers
// (internal/k8s/source) instead of the sandbox's desired objects, with pods
// attached by the CNI plugin (agentapi.CNIBackend) instead of the sandbox.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/cni"
	"github.com/bulwark-net/bulwark/internal/datapath"
	"github.com/bulwark-net/bulwark/internal/datapath/socklb"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/k8s/crds"
	k8sidentity "github.com/bulwark-net/bulwark/internal/k8s/identity"
	"github.com/bulwark-net/bulwark/internal/k8s/source"
	"github.com/bulwark-net/bulwark/internal/k8s/status"
	"github.com/bulwark-net/bulwark/internal/policy"
)

// KubeOptions configure RunKubernetes.
type KubeOptions struct {
	// Options: Paths, Foreground, HubbleAddr, MetricsAddr, HubbleTLS,
	// IdentityGrace, FQDN, DNSReject and Log apply as in sandbox mode.
	Options
	// REST is the API server's client configuration.
	REST *rest.Config
	// NodeName is this node's Node object name.
	NodeName string
	// NodeNetns is the network namespace of the pods' host-side veths and
	// of the node's routes ("" = the agent's own).
	NodeNetns string
	// CNIConf is where the CNI configuration is written once the node has
	// a pod CIDR: a .conflist file, or a directory (05-bulwark.conflist
	// in it); "" writes none.
	CNIConf string
	// CNIMode is cni.ModeStandalone (default) or cni.ModeChained.
	CNIMode string
	// IPAMDataDir is host-local's store (default cni.DefaultIPAMDataDir).
	IPAMDataDir string
	// NativeRouting installs a route to every other node's pod CIDRs via
	// that node's InternalIP.
	NativeRouting bool
	// LocalIdentities numbers identities on this node alone instead of
	// through CiliumIdentity objects (a single-node cluster only: other
	// nodes would number the same labels differently).
	LocalIdentities bool
	// SkipCRDs leaves the cilium.io CRDs as they are; by default the
	// agent installs (or updates) them on start, as Cilium's does.
	SkipCRDs bool
	// NoPolicyStatus writes no status into the cilium.io policies.
	NoPolicyStatus bool
	// Batch is how long informer events are gathered into one reconcile
	// (0: 10ms).
	Batch time.Duration
	// CgroupRoot is a cgroup v2 directory holding the node's pods: the
	// agent translates ClusterIPs at their sockets (connect, sendmsg),
	// so that policy sees the backend pod, as Cilium's socket LB does.
	// Empty: no translation; kube-proxy's NAT then happens after the pod's
	// egress policy, which sees the Service address (world).
	CgroupRoot string
	// IdentityGCInterval is how often the agent deletes the CiliumIdentity
	// objects no pod uses (0: 15 minutes; negative: never), once they have
	// been unused for IdentityGCGrace (0: 15 minutes). It must exceed
	// IdentityGrace, the node's own grace.
	IdentityGCInterval time.Duration
	IdentityGCGrace    time.Duration
}

// ConfListName is the file the agent writes in a --cni-conf directory.
const ConfListName = "05-bulwark.conflist"

// kubeAgent is the agent in Kubernetes mode. It serves the same API as the
// sandbox agent (the read-only views are the sandbox agent's), plus the CNI
// routes; objects come from the API server, so Apply and Delete refuse.
type kubeAgent struct {
	*Agent
	kopts KubeOptions
	src   *source.Source

	cniMu     sync.Mutex    // guards eps (the agent's mu orders changes)
	eps       *cniEndpoints // attached pods, persisted
	ready     chan struct{} // closed after the first reconcile
	readyOnce sync.Once
	k         *kubeState                // what the last reconcile applied; under a.mu
	numbering identity.ClusterNumbering // nil: node-local identities
	status    *status.Writer            // nil: no policy status written

	lb       *socklb.LB       // ClusterIP translation; nil without CgroupRoot
	lbLast   []socklb.Service // what lb holds
	lbSynced bool             // lbLast was written
}

var (
	_ agentapi.Backend    = (*kubeAgent)(nil)
	_ agentapi.CNIBackend = (*kubeAgent)(nil)
)

// RunKubernetes runs the agent in Kubernetes mode until ctx ends or a
// client asks it to shut down.
func RunKubernetes(ctx context.Context, opts KubeOptions) (err error) {
	if opts.REST == nil {
		return errors.New("kubernetes mode: no API server configuration")
	}
	if opts.NodeName == "" {
		return errors.New("kubernetes mode: the node name is required (--node-name or NODE_NAME)")
	}
	// The API server warns about Cilium's CRD schemas (e.g. an unknown
	// "idn-hostname" format) on every write of a policy status: say each
	// warning once, not once per status update.
	opts.REST = rest.CopyConfig(opts.REST)
	opts.REST.WarningHandler = rest.NewWarningWriter(os.Stderr, rest.WarningWriterOptions{Deduplicate: true})
	switch opts.CNIMode {
	case "":
		opts.CNIMode = cni.ModeStandalone
	case cni.ModeStandalone, cni.ModeChained:
	default:
		return fmt.Errorf("--cni-mode %q: must be %s or %s", opts.CNIMode, cni.ModeStandalone, cni.ModeChained)
	}
	if g := opts.IdentityGCGrace; g != 0 {
		local := opts.IdentityGrace
		if local == 0 {
			local = defaultIdentityGrace
		}
		if g <= local {
			return fmt.Errorf("--identity-gc-grace %s: must exceed the node's identity grace (%s), or an object could go while a node still holds its number", g, local)
		}
	}
	a, closeBase, err := openAgent(opts.Options)
	if err != nil {
		return err
	}
	defer closeBase()
	a.log = a.log.With("node", opts.NodeName)
	health := a.health
	k := &kubeAgent{Agent: a, kopts: opts, ready: make(chan struct{}), k: newKubeState()}
	a.log.Info("agent starting in kubernetes mode", "pid", os.Getpid(), "state", opts.Paths.StateDir, "node", opts.NodeName)
	defer a.ui.close()

	client, err := kubernetes.NewForConfig(opts.REST)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(opts.REST)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	if !opts.SkipCRDs {
		crdCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err := crds.Install(crdCtx, opts.REST)
		cancel()
		if err != nil {
			return err
		}
	}
	if k.src, err = source.New(source.Options{Client: client, Dynamic: dyn, NodeName: opts.NodeName, Batch: opts.Batch, Log: a.log}); err != nil {
		return err
	}
	var clusterIDs *k8sidentity.Numbering
	if !opts.LocalIdentities {
		num, err := k8sidentity.New(dyn, k8sidentity.Options{FieldManager: "bulwark-agent/" + opts.NodeName})
		if err != nil {
			return err
		}
		numCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		// The informer runs for the agent's life (ctx), the wait is bounded.
		errc := make(chan error, 1)
		go func() { errc <- num.Start(ctx) }()
		select {
		case err = <-errc:
		case <-numCtx.Done():
			err = fmt.Errorf("CiliumIdentity cache did not sync: %w", context.Cause(numCtx))
		}
		cancel()
		if err != nil {
			return err
		}
		k.numbering = num
		clusterIDs = num
	}
	if !opts.NoPolicyStatus {
		if k.status, err = status.NewWriter(dyn, opts.NodeName, status.Options{}); err != nil {
			return err
		}
	}
	if a.node, err = openKubeNode(ctx, k); err != nil {
		return fmt.Errorf("open node: %w", err)
	}
	closed := false
	defer func() {
		if !closed {
			a.node.close()
		}
	}()
	if opts.CgroupRoot != "" {
		if k.lb, err = socklb.Load(socklb.Options{CgroupPath: opts.CgroupRoot, PinDir: kubeLBPinDir(opts.Paths)}); err != nil {
			return fmt.Errorf("--cgroup-root %s: service translation: %w", opts.CgroupRoot, err)
		}
		defer k.lb.Close()
	}
	health.Set(ReadyDatapath, nil)
	srcCtx, stopSrc := context.WithCancel(ctx)
	defer stopSrc()
	k.src.Start(srcCtx)
	if k.status != nil {
		go k.status.Run(srcCtx)
	}

	// The CNI API answers from now on: STATUS says not ready and ADD
	// waits until the informers synced and the first reconcile ran.
	srv, err := agentapi.Listen(opts.Paths.Socket, k)
	if err != nil {
		return err
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve() }()
	defer func() {
		shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = srv.Close(shutCtx)
		cancel()
	}()
	a.log.Info("agent serving", "socket", opts.Paths.Socket)

	syncCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	err = k.src.WaitForSync(syncCtx)
	cancel()
	if err != nil {
		return err
	}
	updates := make(chan struct{}, 1)
	go func() {
		for k.src.Wait(srcCtx) {
			select {
			case updates <- struct{}{}:
			default:
			}
		}
	}()
	k.reconcile(ctx)
	if clusterIDs != nil && opts.IdentityGCInterval >= 0 {
		interval, grace := opts.IdentityGCInterval, opts.IdentityGCGrace
		if interval == 0 {
			interval = defaultIdentityGCInterval
		}
		if grace == 0 {
			grace = defaultIdentityGCGrace
		}
		go k.collectClusterIdentities(srcCtx, clusterIDs, interval, grace)
	}
	// Synced: the informers listed and their state was pushed once.
	health.Set(ReadySource, nil)
	resync := time.NewTicker(30 * time.Second)
	defer resync.Stop()
	var req agentapi.ShutdownRequest
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case req = <-a.shutdown:
			break loop
		case err := <-serveErr:
			return fmt.Errorf("serve API: %w", err)
		case <-updates:
			k.reconcile(ctx)
		case <-resync.C:
			k.reconcile(ctx)
		}
	}
	a.log.Info("agent stopping", "destroy", req.Destroy)
	health.Stopping()
	a.mu.Lock()
	defer a.mu.Unlock()
	closed = true
	if req.Destroy {
		return a.node.destroyKube()
	}
	// Endpoints, pins and routes stay: pods keep their policy while no
	// agent runs, and the next agent adopts them.
	a.node.close()
	return nil
}

// kubeLBPinDir is where the ClusterIP translation of Kubernetes mode pins
// its maps and cgroup links.
func kubeLBPinDir(p Paths) string { return filepath.Join(p.PinDir, "socklb") }

// openKubeNode is openNode without a sandbox: the datapath (adopting its
// pins), the repository (identities from Numbering), the endpoints the CNI
// plugin attached before (still attached, adopted), the observer and the
// L7 proxies. Nothing is synced until the informers have listed: a sync
// without the cluster's state would unload adopted endpoints.
func openKubeNode(ctx context.Context, k *kubeAgent) (*node, error) {
	a, p := k.Agent, k.kopts.Paths
	n := &node{
		log: a.log, paths: p,
		attached: map[uint32]string{}, loaded: map[uint32]bool{},
		inRepo: map[policy.ObjectRef]bool{}, problems: map[string]string{}, desired: map[string]bool{},
		nodeNetns:     k.kopts.NodeNetns,
		kubeNode:      k.kopts.NodeName,
		identityGrace: defaultIdentityGrace,
	}
	var alloc *identity.Allocator
	if k.numbering != nil {
		alloc = identity.NewClusterAllocator(k.numbering)
	} else {
		alloc = identity.NewAllocator()
		if err := restoreIdentities(n.identitiesFile(), alloc); err != nil {
			n.log.Warn("identities not restored", "err", err)
			alloc = identity.NewAllocator()
		}
	}
	selIDs, err := restoreSelectorIDs(n.selectorsFile())
	if err != nil {
		n.log.Warn("selector IDs not restored", "err", err)
	}
	n.repo = policy.NewRepository(policy.Options{Allocator: alloc, SelectorIDs: selIDs})
	if n.ids, err = openEndpointIDs(filepath.Join(p.StateDir, "endpoints.json")); err != nil {
		return nil, err
	}
	cfg, err := wantedSandboxConfig(p, a.opts)
	if err != nil {
		return nil, err
	}
	// Local delivery (a pod's packet redirected straight into another
	// local pod) is off unless asked for: it would bypass the node's
	// netfilter, so kube-proxy's reverse NAT would never see a Service
	// backend's reply to a pod on the same node (the client gets the
	// backend's address back instead of the Service's and drops it).
	noLocal := true
	if a.opts.LocalDelivery != nil {
		noLocal = !*a.opts.LocalDelivery
	}
	if n.dp, err = datapath.Open(datapath.Options{PinDir: datapathPinDir(p), DisableLocalDelivery: noLocal}); err != nil {
		return nil, fmt.Errorf("open datapath: %w", err)
	}
	if k.eps, err = openCNIEndpoints(filepath.Join(p.StateDir, "cni-endpoints.json")); err != nil {
		n.dp.Close()
		return nil, err
	}
	// Adopt: the endpoints a previous agent attached keep their programs
	// and their loaded policy; they are counted attached so that the
	// first sync (after the informers listed) keeps them loaded.
	for _, r := range k.eps.list() {
		if id, ok := n.ids.lookup(r.podKey()); ok && id == r.EndpointID {
			n.attached[id] = r.podKey()
		}
	}
	if err := writeSandboxConfig(p, cfg); err != nil {
		n.dp.Close()
		return nil, err
	}
	if a.opts.IdentityGrace > 0 {
		n.identityGrace = a.opts.IdentityGrace
	}
	n.fqdn = newFQDNLearner(n, a.opts.FQDN)
	n.events = startEventPump(ctx, n, a.listeners)
	n.fqdnStop = n.fqdn.start(ctx)
	lo := l7Options{NodeNetns: n.nodeNetns, Record: n.recordL7, Learn: n.fqdn.Learn}
	lo.DNSDeniedRcode, _ = dnsRejectRcode(cfg.DNSReject)
	if n.events.metrics != nil {
		lo.Registerer = n.events.metrics.Registry()
	}
	if n.l7, err = startL7(n.log, lo); err != nil {
		n.log.Error("L7 proxy not started: L7 rules drop their traffic", "err", err)
		n.events.errors = append(n.events.errors, "L7 proxy: "+err.Error())
		n.l7 = nil
	}
	n.publishEventView()
	return n, nil
}

// destroyKube removes the datapath (programs, pins) and the state; the
// pods' veths belong to the runtime and stay.
func (n *node) destroyKube() error {
	n.close()
	var errs []error
	if dp, err := datapath.Open(datapath.Options{PinDir: datapathPinDir(n.paths), ConntrackGCInterval: -1}); err != nil {
		errs = append(errs, err)
	} else if err := dp.Destroy(); err != nil {
		errs = append(errs, fmt.Errorf("destroy datapath: %w", err))
	}
	if err := socklb.Remove(kubeLBPinDir(n.paths)); err != nil {
		errs = append(errs, fmt.Errorf("remove service translation: %w", err))
	}
	if err := os.RemoveAll(n.paths.StateDir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// isReady reports whether the first reconcile ran.
func (k *kubeAgent) isReady() bool {
	select {
	case <-k.ready:
		return true
	default:
		return false
	}
}

// waitReady waits for the first reconcile (or ctx).
func (k *kubeAgent) waitReady(ctx context.Context) error {
	select {
	case <-k.ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("agent not ready (informers not synced): %w", context.Cause(ctx))
	}
}
