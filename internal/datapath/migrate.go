package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// Pinned maps outlive the agent, and so outlive its version: an upgraded
// agent may find maps of an older layout. Most layouts cannot be carried
// over (and Open refuses them), but a map whose value only grew at its end,
// with fields whose zero is the right start, can: its entries are copied
// into the new map, zero-extended. That keeps the established connections
// of an upgraded node, whose replies the policy alone may not allow.
//
// grownValues lists, per map, the value sizes of older layouts that
// zero-extend to the current one.
var grownValues = map[string][]uint32{
	// 32 bytes: before the local delivery route cache (route, route_*).
	bpfMapBwConntrack: {32},
}

// migrationSuffix marks an old-layout pin while its entries move.
const migrationSuffix = "_migrating" // bpffs refuses dots in names

// migration is an old-layout map being carried into its new map.
type migration struct {
	name string
	old  *ebpf.Map
	pin  string // where old is pinned meanwhile
}

// prepareMigrations moves aside the pins whose layout grew (grownValues),
// so that loading creates the new maps beside them, and opens them. A
// migration an earlier agent left unfinished is picked up. Pins of other
// layouts are left for the load to refuse.
func prepareMigrations(spec *ebpf.CollectionSpec, pinDir string) ([]migration, error) {
	var out []migration
	for name, olds := range grownValues {
		ms := spec.Maps[name]
		if ms == nil {
			continue
		}
		pin := filepath.Join(pinDir, name)
		moved := pin + migrationSuffix
		if _, err := os.Stat(moved); err != nil {
			m, err := ebpf.LoadPinnedMap(pin, nil)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("open pinned map %s: %w", name, err)
			}
			info, err := m.Info()
			m.Close()
			if err != nil {
				return nil, fmt.Errorf("pinned map %s: %w", name, err)
			}
			if !grownFrom(ms, info, olds) {
				continue
			}
			if err := os.Rename(pin, moved); err != nil {
				return nil, fmt.Errorf("move aside pinned map %s of an older layout: %w", name, err)
			}
		}
		old, err := ebpf.LoadPinnedMap(moved, nil)
		if err != nil {
			return nil, fmt.Errorf("open pinned map %s of an older layout: %w", name, err)
		}
		out = append(out, migration{name: name, old: old, pin: moved})
	}
	return out, nil
}

// grownFrom reports whether a pinned map is the spec's map in an older
// layout that zero-extends to it.
func grownFrom(spec *ebpf.MapSpec, info *ebpf.MapInfo, olds []uint32) bool {
	if info.Type != spec.Type || info.KeySize != spec.KeySize || info.MaxEntries != spec.MaxEntries {
		return false
	}
	for _, v := range olds {
		if info.ValueSize == v && v < spec.ValueSize {
			return true
		}
	}
	return false
}

// abortMigrations puts the moved pins back (the load failed: the maps stay
// the previous agent's).
func abortMigrations(ms []migration) {
	for _, m := range ms {
		os.Rename(m.pin, filepath.Join(filepath.Dir(m.pin), m.name))
		m.old.Close()
	}
}

// copyMigrations copies the old maps' entries, zero-extended, into the new
// ones; entries the new map already has win (the new programs wrote them).
// With finish, the old maps are unpinned and closed: call it once the
// links run the new programs, so nothing writes the old maps any more.
func (dp *Datapath) copyMigrations(ms []migration, finish bool) error {
	for _, m := range ms {
		dst := dp.mapByName(m.name)
		if dst == nil {
			return fmt.Errorf("migrate %s: no such map", m.name)
		}
		info, err := m.old.Info()
		if err != nil {
			return fmt.Errorf("migrate %s: %w", m.name, err)
		}
		key := make([]byte, info.KeySize)
		val := make([]byte, info.ValueSize)
		grown := make([]byte, dst.ValueSize())
		it := m.old.Iterate()
		for it.Next(&key, &val) {
			clear(grown)
			copy(grown, val)
			if err := dst.Update(key, grown, ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
				return fmt.Errorf("migrate %s: %w", m.name, err)
			}
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("migrate %s: read the old map: %w", m.name, err)
		}
		if finish {
			if err := os.Remove(m.pin); err != nil {
				return fmt.Errorf("migrate %s: unpin the old map: %w", m.name, err)
			}
			m.old.Close()
		}
	}
	return nil
}

// undoMigrations gives the pins back to the old maps (Open failed after the
// load) and closes the loaded objects.
func (dp *Datapath) undoMigrations(ms []migration) {
	for _, m := range ms {
		if dst := dp.mapByName(m.name); dst != nil {
			dst.Unpin()
		}
	}
	abortMigrations(ms)
	dp.objs.Close()
}

// mapByName is the loaded map of a BPF map name.
func (dp *Datapath) mapByName(name string) *ebpf.Map {
	switch name {
	case bpfMapBwConntrack:
		return dp.objs.BwConntrack
	}
	return nil
}
