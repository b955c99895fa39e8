package datapath

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// pinOldConntrack pins, under pinDir, a conntrack map of an older layout
// (values of valueSize bytes) holding one ingress TCP flow from peerA:40000
// to podAddr:80 on ifindex 7, decided under revision 5.
func pinOldConntrack(t *testing.T, pinDir string, valueSize uint32) {
	t.Helper()
	if err := os.MkdirAll(pinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{
		Name: bpfMapBwConntrack, Type: ebpf.LRUHash, KeySize: 44, ValueSize: valueSize, MaxEntries: 4096, Pinning: ebpf.PinByName,
	}, ebpf.MapOptions{PinPath: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// The key, and the value's first 32 bytes, as the C structs lay them
	// out (bw_ct_key, bw_ct_entry).
	key := make([]byte, 44)
	lo, hi := peerA.As16(), podAddr.As16() // peerA sorts below podAddr
	copy(key[0:], lo[:])
	copy(key[16:], hi[:])
	binary.BigEndian.PutUint16(key[32:], 40000)
	binary.BigEndian.PutUint16(key[34:], 80)
	key[36] = 6 // TCP
	binary.NativeEndian.PutUint32(key[40:], 7)
	val := make([]byte, valueSize)
	binary.NativeEndian.PutUint64(val[0:], 1<<40) // expires: years ahead in jiffies
	binary.NativeEndian.PutUint64(val[8:], 5)     // revision
	binary.NativeEndian.PutUint32(val[16:], 3)    // rule_id
	binary.NativeEndian.PutUint32(val[20:], uint32(idA))
	if valueSize >= 31 {
		val[26] = 0    // dir: ingress
		val[27] = 1    // verdict: allow
		val[28] = 0x12 // tcp_flags_seen
		val[30] = 1    // orig_lo
	}
	if err := m.Put(key, val); err != nil {
		t.Fatal(err)
	}
}

// TestOpenCarriesOverGrownConntrack: an agent upgraded across a layout
// change that only appended fields keeps the previous agent's connections:
// the old entries are copied, zero-extended, and the old pin goes away.
func TestOpenCarriesOverGrownConntrack(t *testing.T) {
	requireRoot(t)
	pin := "/sys/fs/bpf/bulwark-mig-" + randSuffix()
	t.Cleanup(func() { os.RemoveAll(pin) })
	pinOldConntrack(t, pin, 32)
	dp, err := Open(Options{PinDir: pin, ConntrackGCInterval: -1, Sizes: Sizes{Conntrack: 4096}})
	if err != nil {
		t.Fatalf("open over an older conntrack layout: %v", err)
	}
	t.Cleanup(func() { dp.Destroy() })
	flows, err := dp.Conntrack()
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != 1 {
		t.Fatalf("%d flows carried over, want 1: %+v", len(flows), flows)
	}
	f := flows[0]
	if f.Src != peerA || f.Dst != podAddr || f.SrcPort != 40000 || f.DstPort != 80 || f.IfIndex != 7 ||
		f.Direction != resolved.Ingress || f.Revision != 5 || f.RuleID != 3 || f.ExpiresIn < time.Hour {
		t.Fatalf("carried-over flow %+v", f)
	}
	var k bpfBwCtKey
	var v bpfBwCtEntry
	for it := dp.objs.BwConntrack.Iterate(); it.Next(&k, &v); {
		if v.Route != 0 || v.RouteIfindex != 0 {
			t.Errorf("new fields not zero: route %d ifindex %d", v.Route, v.RouteIfindex)
		}
	}
	if _, err := os.Stat(filepath.Join(pin, bpfMapBwConntrack+migrationSuffix)); !os.IsNotExist(err) {
		t.Errorf("the old map's pin is left: %v", err)
	}
}

// TestOpenRefusesOtherLayouts: a pinned map whose layout cannot be carried
// over is refused with a message that names the pins, and left in place.
func TestOpenRefusesOtherLayouts(t *testing.T) {
	requireRoot(t)
	pin := "/sys/fs/bpf/bulwark-mig-" + randSuffix()
	t.Cleanup(func() { os.RemoveAll(pin) })
	pinOldConntrack(t, pin, 24)
	_, err := Open(Options{PinDir: pin, ConntrackGCInterval: -1, Sizes: Sizes{Conntrack: 4096}})
	if err == nil || !strings.Contains(err.Error(), "must match this layout") {
		t.Fatalf("open over an unknown conntrack layout: %v", err)
	}
	if _, err := os.Stat(filepath.Join(pin, bpfMapBwConntrack)); err != nil {
		t.Errorf("the refused pin was moved: %v", err)
	}
}

// TestGrownValuesHaveTheirMaps: every map listed as migratable is found
// among the loaded objects, and its current value is larger than the old
// sizes listed.
func TestGrownValuesHaveTheirMaps(t *testing.T) {
	dp := openTest(t, Sizes{})
	for name, olds := range grownValues {
		m := dp.mapByName(name)
		if m == nil {
			t.Errorf("%s is listed in grownValues but mapByName does not know it", name)
			continue
		}
		for _, v := range olds {
			if v >= m.ValueSize() {
				t.Errorf("%s: old value size %d is not smaller than the current %d", name, v, m.ValueSize())
			}
		}
	}
}
