package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
)

// Endpoint flags (bpf/include/bulwark_maps.h).
const (
	epFlagReady          = 1 << 0
	epFlagEnforceIngress = 1 << 1
	epFlagEnforceEgress  = 1 << 2
	epFlagOverflow       = 1 << 3
	epFlagAuditIngress   = 1 << 4 // no match passes as audit (BW_EP_AUDIT_INGRESS)
	epFlagAuditEgress    = 1 << 5
	epFlagHasAudit       = 1 << 6 // the tables hold audit entries (BW_EP_HAS_AUDIT)

	selFlagOverflow = 1 << 0

	cfgLocalDelivery = 1 << 0 // BW_CFG_LOCAL_DELIVERY
)

// Datapath is a loaded instance of Bulwark's BPF programs and its pinned
// maps. Methods are safe for concurrent use.
type Datapath struct {
	opts  Options
	sizes Sizes
	objs  bpfObjects

	mu        sync.Mutex
	endpoints map[uint32]*endpointState // by endpoint ID
	desired   *State                    // last State given to Sync
	compiled  *Compiled                 // tables of the last Sync
	rules     map[uint32]RuleInfo
	revision  uint64
	hz        uint32         // jiffies per second (conntrack clock)
	counts    map[string]int // entries per map after the last sync/GC
	mirror    *mirror        // syncer's view of the maps it owns; nil = re-read
	// synced: the maps hold compiled for every attached endpoint (the last
	// sync succeeded): SyncChanges may compare only what changed.
	synced bool

	synthetic     chan event.Event // events the syncer raises (overflow)
	overflows     atomic.Uint64
	eventsReading atomic.Bool
	// eventsReadErrors counts ring records the reader could not read
	// or decode (each is a lost event).
	eventsReadErrors atomic.Uint64

	gcStop chan struct{}
	gcDone chan struct{}
	closed bool
}

type endpointState struct {
	ep     Endpoint
	gen    uint32 // active table buffer (0/1)
	flags  uint32
	links  []link.Link // TCX links (pinned)
	legacy bool        // attached with clsact + cls_bpf
	// overflowReason says why the last Sync failed the endpoint closed.
	overflowReason string
}

const (
	bpffsMagic = 0xcafe4a11
	linksDir   = "links"
)

// Open loads the programs and creates, or adopts, the pinned maps under
// opts.PinDir. Adopted maps keep their content: endpoints, tables and
// conntrack of a previous agent continue.
func Open(opts Options) (*Datapath, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if err := ensureBPFFS(opts.PinDir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(opts.PinDir, linksDir), 0o700); err != nil {
		return nil, fmt.Errorf("create pin dir: %w", err)
	}
	sizes := opts.Sizes.withDefaults()
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("load BPF spec: %w", err)
	}
	setSize := func(name string, n uint32) {
		spec.Maps[name].MaxEntries = n
	}
	setSize(bpfMapBwEndpoints, sizes.Endpoints)
	setSize(bpfMapBwIpcache, sizes.IPCache)
	setSize(bpfMapBwIdSelectors, sizes.IdentitySelectors)
	setSize(bpfMapBwPolicy, sizes.Policy)
	setSize(bpfMapBwConntrack, sizes.Conntrack)
	setSize(bpfMapBwEvents, sizes.EventsBytes)
	for name, m := range spec.Maps {
		if strings.HasPrefix(name, ".") {
			continue // .bss of the BTF anchor: per load
		}
		m.Pinning = ebpf.PinByName
	}
	dp := &Datapath{
		opts:      opts,
		sizes:     sizes,
		endpoints: map[uint32]*endpointState{},
		rules:     map[uint32]RuleInfo{},
		counts:    map[string]int{},
		synthetic: make(chan event.Event, 256),
	}
	migrations, err := prepareMigrations(spec, opts.PinDir)
	if err != nil {
		return nil, err
	}
	if err := spec.LoadAndAssign(&dp.objs, &ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: opts.PinDir},
	}); err != nil {
		abortMigrations(migrations)
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load programs: %+v", ve)
		}
		return nil, fmt.Errorf("load programs and maps (pins under %s must match this layout and these sizes): %w", opts.PinDir, err)
	}
	// Old-layout entries are copied before the links move to the new
	// programs and once more after, when nothing writes the old maps.
	if err := dp.copyMigrations(migrations, false); err != nil {
		dp.undoMigrations(migrations)
		return nil, err
	}
	if err := dp.adopt(); err != nil {
		dp.undoMigrations(migrations)
		return nil, err
	}
	if err := dp.copyMigrations(migrations, true); err != nil {
		dp.objs.Close()
		return nil, err
	}
	if dp.hz == 0 {
		if dp.hz, err = measureHZ(dp.objs.BulwarkClock); err != nil {
			dp.objs.Close()
			return nil, err
		}
	}
	if err := dp.writeConfig(dp.revision); err != nil {
		dp.objs.Close()
		return nil, err
	}
	interval := opts.ConntrackGCInterval
	if interval == 0 {
		interval = 30 * time.Second
	}
	if interval > 0 {
		dp.gcStop = make(chan struct{})
		dp.gcDone = make(chan struct{})
		go dp.gcLoop(interval)
	}
	return dp, nil
}

// ensureBPFFS mounts bpffs at /sys/fs/bpf when the pin dir lives there and
// nothing is mounted yet; it never unmounts.
func ensureBPFFS(pinDir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err == nil && st.Type == bpffsMagic {
		return nil
	}
	if !strings.HasPrefix(filepath.Clean(pinDir), "/sys/fs/bpf/") {
		return nil // caller's own bpffs mount
	}
	if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, ""); err != nil {
		return fmt.Errorf("mount bpffs at /sys/fs/bpf: %w", err)
	}
	return nil
}

// adopt reads back the state a previous agent left in the pins: endpoint
// records, the policy revision, and the pinned links (moved to the newly
// loaded programs).
func (dp *Datapath) adopt() error {
	var ifindex uint32
	var rec bpfBwEndpoint
	it := dp.objs.BwEndpoints.Iterate()
	for it.Next(&ifindex, &rec) {
		dp.endpoints[rec.EndpointId] = &endpointState{
			ep:    Endpoint{ID: rec.EndpointId, IfIndex: int(ifindex), Identity: identity.NumericIdentity(rec.Identity)},
			gen:   rec.TableId[0] & 1,
			flags: rec.Flags,
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read endpoint map: %w", err)
	}
	var cfg bpfBwConfig
	if err := dp.objs.BwConfigMap.Lookup(uint32(0), &cfg); err != nil {
		return fmt.Errorf("read config map: %w", err)
	}
	dp.revision = cfg.Revision
	dp.hz = cfg.Hz // pins do not outlive a boot: a measured HZ stays right

	entries, err := os.ReadDir(filepath.Join(dp.opts.PinDir, linksDir))
	if err != nil {
		return fmt.Errorf("read link pins: %w", err)
	}
	for _, de := range entries {
		path := filepath.Join(dp.opts.PinDir, linksDir, de.Name())
		var ifi int
		var dir string
		if _, err := fmt.Sscanf(de.Name(), "tcx_%d_%s", &ifi, &dir); err != nil {
			continue
		}
		var es *endpointState
		for _, e := range dp.endpoints {
			if e.ep.IfIndex == ifi {
				es = e
			}
		}
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			return fmt.Errorf("adopt link %s: %w", path, err)
		}
		prog := dp.objs.BulwarkFromPod
		if dir == "egress" {
			prog = dp.objs.BulwarkToPod
		}
		if es == nil {
			// A link without an endpoint record cannot enforce anything
			// useful; it drops (UNKNOWN_ENDPOINT). Keep it until detached.
			l.Close()
			continue
		}
		if err := l.Update(prog); err != nil {
			l.Close()
			if errors.Is(err, unix.ENOLINK) {
				// Severed: the interface went away while no agent ran
				// (its pod was deleted). Nothing to enforce on; the
				// stale endpoint is detached by the next sync.
				if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
					return fmt.Errorf("remove severed link %s: %w", path, rerr)
				}
				continue
			}
			return fmt.Errorf("move link %s to the new program: %w", path, err)
		}
		es.links = append(es.links, l)
	}
	return nil
}

// Revision is the datapath's policy revision (bumped by each Sync that
// changed tables, membership or ipcache).
func (dp *Datapath) Revision() uint64 {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	return dp.revision
}

// Close releases this process's handles and leaves pins and links:
// enforcement continues without the agent.
func (dp *Datapath) Close() error {
	dp.mu.Lock()
	if dp.closed {
		dp.mu.Unlock()
		return nil
	}
	dp.closed = true
	dp.mu.Unlock()
	if dp.gcStop != nil {
		close(dp.gcStop)
		<-dp.gcDone
	}
	dp.mu.Lock()
	defer dp.mu.Unlock()
	for _, es := range dp.endpoints {
		for _, l := range es.links {
			l.Close()
		}
		es.links = nil
	}
	return dp.objs.Close()
}

// Destroy detaches every endpoint, removes all pins and closes: nothing of
// this instance stays in the kernel.
func (dp *Datapath) Destroy() error {
	var errs []error
	dp.mu.Lock()
	ids := make([]uint32, 0, len(dp.endpoints))
	for id := range dp.endpoints {
		ids = append(ids, id)
	}
	dp.mu.Unlock()
	for _, id := range ids {
		if err := dp.DetachEndpoint(id); err != nil {
			errs = append(errs, err)
		}
	}
	// Stray link pins (an endpoint record lost): unpin so the links go;
	// and old maps of an interrupted migration.
	linkPins, _ := filepath.Glob(filepath.Join(dp.opts.PinDir, linksDir, "*"))
	oldMaps, _ := filepath.Glob(filepath.Join(dp.opts.PinDir, "*"+migrationSuffix))
	for _, p := range append(linkPins, oldMaps...) {
		if err := os.Remove(p); err != nil {
			errs = append(errs, err)
		}
	}
	for _, m := range []*ebpf.Map{dp.objs.BwConfigMap, dp.objs.BwConntrack, dp.objs.BwDropNotify,
		dp.objs.BwEndpoints, dp.objs.BwEvents, dp.objs.BwFragments, dp.objs.BwIdSelectors, dp.objs.BwIpcache,
		dp.objs.BwMetrics, dp.objs.BwPolicy} {
		if err := m.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin map: %w", err))
		}
	}
	if err := dp.Close(); err != nil {
		errs = append(errs, err)
	}
	os.Remove(filepath.Join(dp.opts.PinDir, linksDir))
	if err := os.Remove(dp.opts.PinDir); err != nil && !os.IsNotExist(err) {
		errs = append(errs, fmt.Errorf("remove pin dir: %w", err))
	}
	return errors.Join(errs...)
}
