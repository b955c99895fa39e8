package datapath

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

// TestAttachMode checks that Mode and EndpointMode report what the kernel
// actually has: TCX programs on the veth, or cls_bpf filters under clsact.
func TestAttachMode(t *testing.T) {
	for _, tc := range []struct {
		name   string
		legacy bool
		want   AttachMode
	}{{"tcx", false, AttachTCX}, {"legacy-tc", true, AttachLegacyTC}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tp := newTopology(t, 2)
			dp := openE2E(t, "/sys/fs/bpf/bulwark-mode-"+tp.sfx, tc.legacy)
			t.Cleanup(func() { dp.Destroy() })
			if m := dp.Mode(); m != AttachNone {
				t.Fatalf("Mode before any attach = %q, want %q", m, AttachNone)
			}
			attachAll(t, dp, tp)
			if m := dp.Mode(); m != tc.want {
				t.Errorf("Mode = %q, want %q", m, tc.want)
			}
			for id := uint32(1); id <= 2; id++ {
				if m, ok := dp.EndpointMode(id); !ok || m != tc.want {
					t.Errorf("EndpointMode(%d) = %q, %v; want %q, true", id, m, ok, tc.want)
				}
			}
			if m, ok := dp.EndpointMode(99); ok || m != AttachNone {
				t.Errorf("EndpointMode of an unknown endpoint = %q, %v; want %q, false", m, ok, AttachNone)
			}
			// The kernel agrees with the reported mode.
			hostIf := tp.pods[0].hostIndex
			err := inNetNS(nsPath(tp.node), func() error {
				tcx := 0
				for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
					res, err := link.QueryPrograms(link.QueryOptions{Target: hostIf, Attach: at})
					if err != nil {
						return err
					}
					tcx += len(res.Programs)
				}
				filters := 0
				for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
					fs, err := netlink.FilterList(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: hostIf}}, parent)
					if err != nil {
						return err
					}
					for _, f := range fs {
						if _, ok := f.(*netlink.BpfFilter); ok {
							filters++
						}
					}
				}
				wantTCX, wantFilters := 2, 0
				if tc.legacy {
					wantTCX, wantFilters = 0, 2
				}
				if tcx != wantTCX || filters != wantFilters {
					t.Errorf("kernel has %d TCX programs and %d cls_bpf filters, want %d and %d", tcx, filters, wantTCX, wantFilters)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			for id := uint32(1); id <= 2; id++ {
				if err := dp.DetachEndpoint(id); err != nil {
					t.Fatal(err)
				}
			}
			if m := dp.Mode(); m != AttachNone {
				t.Errorf("Mode after detaching every endpoint = %q, want %q", m, AttachNone)
			}
		})
	}
}
