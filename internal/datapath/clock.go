package datapath

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/cilium/ebpf"
)

// Conntrack time is the kernel's jiffies: the datapath reads them with
// bpf_jiffies64, which costs a load, where the ktime helpers cost more than
// the rest of an established packet's path. Lifetimes are seconds times
// HZ, which the loader measures once and writes into the config map.

// jiffies reads the datapath's clock by running the clock program.
func (dp *Datapath) jiffies() (uint64, error) {
	return readJiffies(dp.objs.BulwarkClock)
}

func readJiffies(clock *ebpf.Program) (uint64, error) {
	in := make([]byte, 64) // at least an Ethernet header
	out := make([]byte, len(in))
	if _, err := clock.Run(&ebpf.RunOptions{Data: in, DataOut: out}); err != nil {
		return 0, fmt.Errorf("read jiffies: %w", err)
	}
	return binary.NativeEndian.Uint64(out), nil
}

var kernelHZ struct {
	once sync.Once
	hz   uint32
	err  error
}

// hzCandidates are the CONFIG_HZ choices Linux offers.
var hzCandidates = []float64{100, 250, 300, 1000}

// measureHZ counts jiffies over 100 ms of CLOCK_MONOTONIC, once per
// process, and rounds to the nearest CONFIG_HZ choice (or to the measured
// rate when none is within 10%).
func measureHZ(clock *ebpf.Program) (uint32, error) {
	kernelHZ.once.Do(func() {
		j0, err := readJiffies(clock)
		if err != nil {
			kernelHZ.err = err
			return
		}
		t0 := time.Now()
		time.Sleep(100 * time.Millisecond)
		j1, err := readJiffies(clock)
		if err != nil {
			kernelHZ.err = err
			return
		}
		rate := float64(j1-j0) / time.Since(t0).Seconds()
		best := math.Round(rate)
		for _, c := range hzCandidates {
			if math.Abs(rate-c) < 0.1*c {
				best = c
			}
		}
		if best < 1 {
			kernelHZ.err = fmt.Errorf("measure HZ: jiffies did not advance (%d -> %d)", j0, j1)
			return
		}
		kernelHZ.hz = uint32(best)
	})
	return kernelHZ.hz, kernelHZ.err
}

// jiffiesToDuration converts a jiffies difference at the configured HZ.
func (dp *Datapath) jiffiesToDuration(d int64) time.Duration {
	return time.Duration(d * int64(time.Second) / int64(dp.hz))
}
