package datapath

import (
	"bufio"
	"compress/gzip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestConntrackClock: the measured HZ is the kernel's (checked against
// CONFIG_HZ where /proc/config.gz exists), and the clock program's jiffies
// follow CLOCK_MONOTONIC at that rate.
func TestConntrackClock(t *testing.T) {
	dp := openTest(t, Sizes{})
	if want, ok := configHZ(t); ok && int(dp.hz) != want {
		t.Fatalf("measured HZ %d, CONFIG_HZ=%d", dp.hz, want)
	}
	j0, err := dp.jiffies()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	time.Sleep(300 * time.Millisecond)
	j1, err := dp.jiffies()
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(t0)
	got := dp.jiffiesToDuration(int64(j1 - j0))
	// Two readings each within one tick of the truth.
	tick := time.Second / time.Duration(dp.hz)
	if got < elapsed-3*tick || got > elapsed+3*tick {
		t.Fatalf("jiffies say %v passed, CLOCK_MONOTONIC %v (tick %v)", got, elapsed, tick)
	}
}

func configHZ(t *testing.T) (int, bool) {
	f, err := os.Open("/proc/config.gz")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(zr)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CONFIG_HZ="); ok {
			n, err := strconv.Atoi(v)
			return n, err == nil
		}
	}
	return 0, false
}
