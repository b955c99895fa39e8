package datapath

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

const (
	tputPort = 5201 // iperf3
	rrPort   = 7000 // ping-pong
)

// BenchmarkThroughput compares, between two pod namespaces behind one node
// namespace, (b) Bulwark enforcing N entries and (c) iptables holding N
// rules in the node's FORWARD chain (stateless, the matching rule last)
// with (a) no filter, for N = 1, 1000, 10000. It prints TCP throughput
// (iperf3), request/response rate on one connection (rr: one byte each way,
// blocking sockets, as netperf's TCP_RR) and connect+request+close rate
// (crr).
//
// Every filtered measurement is paired with an unfiltered one taken right
// before or after it (the order alternates), toggling only the filter:
// Bulwark's programs are detached and attached again with their maps
// loaded, iptables' chain is flushed and restored. A ratio is the median of
// its pairs' ratios, so that the machine's slow and fast spells (this VM
// has both, seconds long) hit both sides of a pair. rr and crr alternate
// short windows (BULWARK_BENCH_WINDOW, 250ms; BULWARK_BENCH_PAIRS, 10
// pairs) on one rr connection; TCP alternates 1 s iperf3 runs (5 pairs).
// Both rr peers run on one CPU (BULWARK_BENCH_CPU, the last; "none" lets
// the scheduler place them): the filter's cost is then all on the critical
// path, and cross-CPU wakeups do not add their noise. The "no filter (A/A)"
// row pairs unfiltered with unfiltered: its spread is the harness's own.
// The datapath runs as the agent runs it, conntrack GC included.
//
//	sudo go test -run XXX -bench BenchmarkThroughput -benchtime 1x ./internal/datapath/
func BenchmarkThroughput(b *testing.B) {
	requireRoot(b)
	for _, tool := range []string{"iperf3", "iptables-restore"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("needs %s", tool)
		}
	}
	tp := newTopology(b, 2)
	tp.cpu = runtime.NumCPU() - 1
	if v := os.Getenv("BULWARK_BENCH_CPU"); v == "none" {
		tp.cpu = -1
	} else if n, err := strconv.Atoi(v); err == nil {
		tp.cpu = n
	}
	tp.serveRR(b, 1, rrPort)
	srv := exec.Command("ip", "netns", "exec", tp.pods[1].ns, "iperf3", "-s", "-p", fmt.Sprint(tputPort))
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	time.Sleep(300 * time.Millisecond) // let iperf3 bind before the first client

	window := 250 * time.Millisecond
	if v, err := time.ParseDuration(os.Getenv("BULWARK_BENCH_WINDOW")); err == nil && v > 0 {
		window = v
	}
	pairs := 10
	if v, err := strconv.Atoi(os.Getenv("BULWARK_BENCH_PAIRS")); err == nil && v > 0 {
		pairs = v
	}
	const tcpPairs = 5
	verbose := os.Getenv("BULWARK_BENCH_VERBOSE") != ""
	var base []sample
	// pairedRows measures a configuration against no filter, toggling the
	// filter with on/off.
	pairedRows := func(name string, on, off func()) *benchRow {
		r := &benchRow{name: name}
		runtime.GC() // the in-process peers should not pay for a Sync's garbage
		var gbps [2][]float64
		for i := range tcpPairs {
			for _, st := range pairOrder(i) {
				toggle(st, on, off)
				gbps[st] = append(gbps[st], tp.iperf(b, 1))
			}
		}
		rr := tp.rrInterleaved(b, pairs, window, on, off)
		crr := tp.crrInterleaved(b, pairs, window, on, off)
		off()
		for i := range max(tcpPairs, pairs) {
			var unf, fil sample
			unf.gbps, fil.gbps = at(gbps[0], i), at(gbps[1], i)
			unf.rr, fil.rr = at(rr[0], i), at(rr[1], i)
			unf.crr, fil.crr = at(crr[0], i), at(crr[1], i)
			base = append(base, unf)
			r.add(unf, fil)
			if verbose {
				fmt.Printf("%-18s pair %d: no filter %.2f Gbit/s %.0f rr/s %.0f crr/s, filtered %.2f %.0f %.0f\n",
					name, i, unf.gbps, unf.rr, unf.crr, fil.gbps, fil.rr, fil.crr)
			}
		}
		return r
	}

	tp.iperf(b, 1) // warm-up, discarded
	tp.rrRate(b, 300*time.Millisecond)

	// A/A: both windows of a pair unfiltered; its spread is the harness's
	// own noise.
	rows := []*benchRow{pairedRows("no filter (A/A)", func() {}, func() {})}

	sizes := []int{1, 1000, 10000}
	if v := os.Getenv("BULWARK_BENCH_SIZES"); v != "" {
		sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				b.Fatalf("BULWARK_BENCH_SIZES: %q is not a rule count", f)
			}
			sizes = append(sizes, n)
		}
	}
	withIPTables := os.Getenv("BULWARK_BENCH_IPTABLES") != "0"
	pin := "/sys/fs/bpf/bulwark-bench-" + tp.sfx
	b.Cleanup(func() { os.RemoveAll(pin) })
	b.Cleanup(func() { exec.Command("ip", "netns", "exec", tp.node, "iptables", "-F", "FORWARD").Run() })
	// The agent's conntrack GC, every 30 s.
	dp, err := Open(Options{PinDir: pin, DisableLocalDelivery: os.Getenv("BULWARK_BENCH_LOCAL_DELIVERY") == "0"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dp.Destroy() })
	// The agent reads every event (policy verdicts, traces) off the ring:
	// a ring nobody drains fills, and then the programs' events cost only
	// a failed reservation.
	evCtx, evStop := context.WithCancel(context.Background())
	b.Cleanup(evStop)
	evs, err := dp.Events(evCtx)
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for range evs {
		}
	}()
	attachAllTB(b, dp, tp)
	for _, n := range sizes {
		if err := dp.Sync(throughputState(tp, n)); err != nil {
			b.Fatal(err)
		}
		rows = append(rows, pairedRows(fmt.Sprintf("bulwark N=%d", n),
			func() { benchResume(b, dp) }, func() { benchSuspend(dp) }))
	}
	// The largest N once more the other way: with local delivery off
	// (on), each packet crosses the node's stack and both pods' hooks.
	nMax := sizes[len(sizes)-1]
	otherWay := "local delivery off"
	if dp.opts.DisableLocalDelivery {
		otherWay = "local delivery on"
	}
	flip := func() { setLocalDelivery(b, dp, dp.opts.DisableLocalDelivery) } // on <-> off
	flip()
	rows = append(rows, pairedRows(fmt.Sprintf("bulwark N=%d, %s", nMax, otherWay),
		func() { benchResume(b, dp) }, func() { benchSuspend(dp) }))
	flip()
	// The programs' own cost on this traffic, from the kernel's BPF run
	// statistics (enabled only here: they add two clock reads per run).
	var progCost strings.Builder
	costOf := func(name string) {
		benchResume(b, dp)
		perRun, perTx := tp.progRunCost(b, dp, time.Second)
		benchSuspend(dp)
		fmt.Fprintf(&progCost, "%-32s %4.0f ns per program run, %5.0f ns per rr transaction (kernel BPF stats)\n", name, perRun, perTx)
	}
	for _, n := range sizes {
		if err := dp.Sync(throughputState(tp, n)); err != nil {
			b.Fatal(err)
		}
		costOf(fmt.Sprintf("N=%d", n))
	}
	flip()
	costOf(fmt.Sprintf("N=%d, %s", nMax, otherWay))
	flip()
	for _, n := range sizes {
		if withIPTables {
			rows = append(rows, pairedRows(fmt.Sprintf("iptables N=%d", n),
				func() { tp.loadIPTables(b, n) }, func() { tp.flushIPTables() }))
		}
	}

	var out strings.Builder
	fmt.Fprintf(&out, "\n%d tcp pairs of 1s, %d rr and crr pairs of %s windows, rr peers on CPU %d; a ratio is the median of the pairs' filtered/no-filter ratios\n", tcpPairs, pairs, window, tp.cpu)
	fmt.Fprintf(&out, "%-34s %10s %6s %9s %6s %13s %9s %6s\n", "config", "tcp Gbit/s", "ratio", "rr/s", "ratio", "(rr min-max)", "crr/s", "ratio")
	g, rr, crr := column(base, func(s sample) float64 { return s.gbps }), column(base, func(s sample) float64 { return s.rr }), column(base, func(s sample) float64 { return s.crr })
	fmt.Fprintf(&out, "%-34s %10.2f %6.2f %9.0f %6.2f %13s %9.0f %6.2f\n", "no filter", median(g), 1.0, median(rr), 1.0, "", median(crr), 1.0)
	for _, r := range rows {
		lo, hi := minMax(r.rrRatio)
		fmt.Fprintf(&out, "%-34s %10.2f %6.2f %9.0f %6.2f %13s %9.0f %6.2f\n", r.name, median(r.gbps), median(r.gbpsRatio),
			median(r.rr), median(r.rrRatio), fmt.Sprintf("(%.2f-%.2f)", lo, hi), median(r.crr), median(r.crrRatio))
	}
	for i, n := range sizes {
		if !withIPTables {
			break
		}
		bw, ipt := rows[1+i], rows[2+len(sizes)+i]
		// Each against its own paired baseline: the machine's spells cancel.
		fmt.Fprintf(&out, "N=%-6d bulwark/iptables (ratio of ratios): rr %.1fx, tcp %.1fx, crr %.1fx\n", n,
			median(bw.rrRatio)/median(ipt.rrRatio), median(bw.gbpsRatio)/median(ipt.gbpsRatio), median(bw.crrRatio)/median(ipt.crrRatio))
	}
	out.WriteString(progCost.String())
	fmt.Print(out.String())
	for range b.N {
	} // the measurement above is the benchmark; b.N does not apply
}

// setLocalDelivery turns local delivery on or off in the running
// datapath (the config flag the programs read per packet).
func setLocalDelivery(b *testing.B, dp *Datapath, on bool) {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	dp.opts.DisableLocalDelivery = !on
	if err := dp.writeConfig(dp.revision); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkTransactionCost reports the programs' own time per transaction
// from the kernel's BPF run statistics, with one allow entry, local
// delivery on and the events read as the agent reads them: per rr
// transaction (one byte each way on an established connection) and per
// crr transaction (connect, one byte each way, close: a new flow, its
// policy verdicts and its traces, at both endpoints). Unlike the rate
// ratios of BenchmarkThroughput it does not depend on the machine's other
// load, only on the programs. BULWARK_BENCH_PAIRS windows of each (1 s);
// the median and the range are printed.
//
//	sudo go test -run XXX -bench BenchmarkTransactionCost -benchtime 1x ./internal/datapath/
func BenchmarkTransactionCost(b *testing.B) {
	requireRoot(b)
	tp := newTopology(b, 2)
	tp.cpu = runtime.NumCPU() - 1
	tp.serveRR(b, 1, rrPort)
	windows := 5
	if v, err := strconv.Atoi(os.Getenv("BULWARK_BENCH_PAIRS")); err == nil && v > 0 {
		windows = v
	}
	pin := "/sys/fs/bpf/bulwark-bench-" + tp.sfx
	b.Cleanup(func() { os.RemoveAll(pin) })
	dp, err := Open(Options{PinDir: pin})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dp.Destroy() })
	evCtx, evStop := context.WithCancel(context.Background())
	b.Cleanup(evStop)
	evs, err := dp.Events(evCtx)
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for range evs {
		}
	}()
	attachAllTB(b, dp, tp)
	if err := dp.Sync(throughputState(tp, 1)); err != nil {
		b.Fatal(err)
	}
	crrRate := func(b *testing.B, d time.Duration) float64 {
		var rate float64
		tp.inPod0(b, func() { rate = crrWindow(b, tp.pods[1].addr, d) })
		return rate
	}
	var rrTx, crrTx, crrRun []float64
	for range windows {
		_, perTx := tp.progRunCostOf(b, dp, time.Second, tp.rrRate)
		rrTx = append(rrTx, perTx)
		perRun, perTx := tp.progRunCostOf(b, dp, time.Second, crrRate)
		crrTx, crrRun = append(crrTx, perTx), append(crrRun, perRun)
	}
	for _, r := range []struct {
		name string
		v    []float64
	}{{"ns per rr transaction", rrTx}, {"ns per crr transaction", crrTx}, {"ns per program run in crr", crrRun}} {
		lo, hi := minMax(r.v)
		fmt.Printf("%-28s median %5.0f  range %5.0f-%5.0f  (%d windows of 1s, kernel BPF stats)\n", r.name, median(r.v), lo, hi, len(r.v))
	}
	for range b.N {
	} // the measurement above is the benchmark; b.N does not apply
}

// progRunCost runs one rr window with the kernel's BPF statistics on and
// returns the mean run time of the two programs and their time per
// request/response transaction.
func (tp *topology) progRunCost(b *testing.B, dp *Datapath, window time.Duration) (perRun, perTx float64) {
	return tp.progRunCostOf(b, dp, window, tp.rrRate)
}

// progRunCostOf is progRunCost for the transactions rate measures.
func (tp *topology) progRunCostOf(b *testing.B, dp *Datapath, window time.Duration,
	rate func(*testing.B, time.Duration) float64) (perRun, perTx float64) {
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		b.Skipf("bpf stats: %v", err)
	}
	defer stats.Close()
	progs := []*ebpf.Program{dp.objs.BulwarkFromPod, dp.objs.BulwarkToPod}
	read := func() (time.Duration, uint64) {
		var t time.Duration
		var n uint64
		for _, p := range progs {
			st, err := p.Stats()
			if err != nil {
				b.Fatal(err)
			}
			t += st.Runtime
			n += st.RunCount
		}
		return t, n
	}
	t0, n0 := read()
	r := rate(b, window)
	t1, n1 := read()
	return float64(t1-t0) / float64(max(1, n1-n0)), float64(t1-t0) / max(1, r*window.Seconds())
}

type sample struct{ gbps, rr, crr float64 } // 0: not measured in this pair

// pairOrder is the order of pair i: 0 = unfiltered, 1 = filtered; it
// alternates so that neither side always runs second.
func pairOrder(i int) [2]int {
	if i%2 == 0 {
		return [2]int{0, 1}
	}
	return [2]int{1, 0}
}

func toggle(filtered int, on, off func()) {
	if filtered == 1 {
		on()
	} else {
		off()
	}
}

func at(v []float64, i int) float64 {
	if i < len(v) {
		return v[i]
	}
	return 0
}

// benchRow holds a filtered configuration's rates and its ratios to the
// no-filter window paired with each.
type benchRow struct {
	name                         string
	gbps, rr, crr                []float64
	gbpsRatio, rrRatio, crrRatio []float64
}

func (r *benchRow) add(unf, fil sample) {
	if unf.gbps > 0 && fil.gbps > 0 {
		r.gbps = append(r.gbps, fil.gbps)
		r.gbpsRatio = append(r.gbpsRatio, fil.gbps/unf.gbps)
	}
	if unf.rr > 0 && fil.rr > 0 {
		r.rr = append(r.rr, fil.rr)
		r.rrRatio = append(r.rrRatio, fil.rr/unf.rr)
	}
	if unf.crr > 0 && fil.crr > 0 {
		r.crr = append(r.crr, fil.crr)
		r.crrRatio = append(r.crrRatio, fil.crr/unf.crr)
	}
}

// column is one measure of the samples that have it.
func column(s []sample, f func(sample) float64) []float64 {
	var out []float64
	for i := range s {
		if v := f(s[i]); v > 0 {
			out = append(out, v)
		}
	}
	return out
}

func minMax(v []float64) (float64, float64) {
	lo, hi := v[0], v[0]
	for _, x := range v {
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}

// benchSuspend detaches the programs from every endpoint, keeping records,
// tables and conntrack: traffic passes unfiltered.
func benchSuspend(dp *Datapath) {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	for _, es := range dp.endpoints {
		for _, l := range es.links {
			l.Unpin()
			l.Close()
		}
		es.links = nil
	}
}

// benchResume attaches the programs again.
func benchResume(b *testing.B, dp *Datapath) {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	for _, es := range dp.endpoints {
		if len(es.links) == 0 {
			if err := dp.attachHooks(es); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// throughputState: B admits A on the two bench ports among n entries, the
// other n-2 for selectors of identities that never send.
func throughputState(tp *topology, n int) State {
	st := e2eState(tp, nil, false)
	pol := st.Endpoints[2]
	pol.Ingress.Entries = nil
	sels := fixtureSelectors{e2eSelA: {e2eIDA}, e2eSelB: {e2eIDB}}
	for i := 0; i < n-2; i++ {
		sel := resolved.SelectorID(1000 + i)
		sels[sel] = []identity.NumericIdentity{identity.NumericIdentity(70000 + i)}
		pol.Ingress.Entries = append(pol.Ingress.Entries, resolved.Entry{Peer: sel, Proto: resolved.ProtoTCP,
			PortLo: tputPort, PortHi: tputPort, Verdict: resolved.Allow, Origin: ref(fmt.Sprint("other-", i))})
	}
	for _, port := range []uint16{tputPort, rrPort} {
		pol.Ingress.Entries = append(pol.Ingress.Entries, resolved.Entry{Peer: e2eSelA, Proto: resolved.ProtoTCP,
			PortLo: port, PortHi: port, Verdict: resolved.Allow, Origin: ref("bench")})
	}
	st.Selectors = sels
	return st
}

// loadIPTables replaces the node's FORWARD chain with n rules: n-2 that
// never match, then the two that admit the bench traffic (both directions,
// stateless), then DROP.
func (tp *topology) loadIPTables(b *testing.B, n int) {
	a, bb := tp.pods[0].addr, tp.pods[1].addr
	var rules bytes.Buffer
	rules.WriteString("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	for i := 0; i < n-2; i++ {
		src := netip.AddrFrom4([4]byte{10, 201, byte(i >> 8), byte(i)})
		fmt.Fprintf(&rules, "-A FORWARD -s %s/32 -d %s/32 -p tcp --dport %d -j ACCEPT\n", src, bb, tputPort)
	}
	fmt.Fprintf(&rules, "-A FORWARD -s %s/32 -d %s/32 -p tcp -m multiport --dports %d,%d -j ACCEPT\n", a, bb, tputPort, rrPort)
	fmt.Fprintf(&rules, "-A FORWARD -s %s/32 -d %s/32 -p tcp -m multiport --sports %d,%d -j ACCEPT\n", bb, a, tputPort, rrPort)
	rules.WriteString("-A FORWARD -j DROP\nCOMMIT\n")
	cmd := exec.Command("ip", "netns", "exec", tp.node, "iptables-restore")
	cmd.Stdin = &rules
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("iptables-restore: %v: %s", err, out)
	}
}

func (tp *topology) flushIPTables() {
	exec.Command("ip", "netns", "exec", tp.node, "iptables", "-F", "FORWARD").Run()
}

// iperf runs an iperf3 client from pod 0 to pod 1 and returns Gbit/s.
func (tp *topology) iperf(b *testing.B, seconds int) float64 {
	out, err := exec.Command("ip", "netns", "exec", tp.pods[0].ns, "iperf3", "-c", tp.pods[1].addr.String(),
		"-p", fmt.Sprint(tputPort), "-t", fmt.Sprint(seconds), "-J").Output()
	if err != nil {
		b.Fatalf("iperf3: %v: %s", err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		b.Fatalf("iperf3 output: %v", err)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9
}

// serveRR answers each byte with a byte on blocking sockets, one locked
// thread per connection (netperf's TCP_RR server), in pod i.
func (tp *topology) serveRR(b *testing.B, i, port int) {
	var lfd int
	if err := inNetNS(nsPath(tp.pods[i].ns), func() error {
		var err error
		lfd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if err := unix.Bind(lfd, &unix.SockaddrInet4{Port: port}); err != nil {
			return err
		}
		return unix.Listen(lfd, 128)
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		unix.Shutdown(lfd, unix.SHUT_RDWR) // wakes the blocked accept
		unix.Close(lfd)
	})
	go func() {
		for {
			fd, _, err := unix.Accept(lfd)
			if err == unix.EINTR || err == unix.ECONNABORTED {
				continue
			}
			if err != nil {
				return
			}
			go func() {
				runtime.LockOSThread()
				tp.pinCPU()
				defer unix.Close(fd)
				unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
				buf := []byte{0}
				for {
					if n, err := unix.Read(fd, buf); n != 1 || err != nil {
						if err == unix.EINTR {
							continue
						}
						return
					}
					if _, err := unix.Write(fd, buf); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// dialBlocking connects to dst within 3 s and returns a blocking socket
// with TCP_NODELAY, in the calling thread's network namespace; the caller
// closes the descriptor.
func dialBlocking(b *testing.B, dst netip.Addr, port int) int {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		b.Fatal(err)
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	err = unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: dst.As4()})
	if err == unix.EINPROGRESS {
		err = awaitConnect(fd)
	}
	if err == nil {
		err = unix.SetNonblock(fd, false)
	}
	if err != nil {
		unix.Close(fd)
		b.Fatalf("dial %s:%d: %v", dst, port, err)
	}
	tv := unix.Timeval{Sec: 3} // a lost exchange fails the run, never hangs it
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	return fd
}

// awaitConnect waits for a connect in progress and returns its result.
func awaitConnect(fd int) error {
	deadline := time.Now().Add(3 * time.Second)
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(fds, int(time.Until(deadline).Milliseconds()))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return unix.ETIMEDOUT
		}
		soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return err
		}
		if soerr != 0 {
			return unix.Errno(soerr)
		}
		return nil
	}
}

// exchange sends one byte and reads one back.
func exchange(b *testing.B, fd int, buf []byte) {
	for {
		_, err := unix.Write(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			b.Fatalf("rr write: %v", err)
		}
		break
	}
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if n != 1 || err != nil {
			b.Fatalf("rr read: %d, %v", n, err)
		}
		return
	}
}

// rrWindow is round trips per second over d on an open connection.
func rrWindow(b *testing.B, fd int, d time.Duration) float64 {
	buf := []byte{1}
	n := 0
	start := time.Now()
	for time.Since(start) < d {
		for range 32 {
			exchange(b, fd, buf)
		}
		n += 32
	}
	return float64(n) / time.Since(start).Seconds()
}

// crrWindow is connect + one round trip + close (RST, no TIME_WAIT) per
// second over d.
func crrWindow(b *testing.B, dst netip.Addr, d time.Duration) float64 {
	buf := []byte{1}
	n := 0
	start := time.Now()
	for time.Since(start) < d {
		fd := dialBlocking(b, dst, rrPort)
		exchange(b, fd, buf)
		unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		unix.Close(fd)
		n++
	}
	return float64(n) / time.Since(start).Seconds()
}

// inPod0 runs fn on a thread in pod 0's namespace, on the bench CPU.
func (tp *topology) inPod0(b *testing.B, fn func()) {
	if err := inNetNS(nsPath(tp.pods[0].ns), func() error {
		tp.pinCPU()
		defer unpinCPU()
		fn()
		return nil
	}); err != nil {
		b.Fatal(err)
	}
}

// rrRate is round trips per second on a new connection from pod 0 to pod 1.
func (tp *topology) rrRate(b *testing.B, d time.Duration) float64 {
	var rate float64
	tp.inPod0(b, func() {
		fd := dialBlocking(b, tp.pods[1].addr, rrPort)
		defer unix.Close(fd)
		exchange(b, fd, []byte{1}) // the connection's first packets take the new-flow path
		rate = rrWindow(b, fd, d)
	})
	return rate
}

// rrInterleaved measures pairs of rr windows on one connection, the filter
// off for one and on for the other: [0] unfiltered, [1] filtered rates.
func (tp *topology) rrInterleaved(b *testing.B, pairs int, d time.Duration, on, off func()) (rates [2][]float64) {
	tp.inPod0(b, func() {
		off()
		fd := dialBlocking(b, tp.pods[1].addr, rrPort)
		defer unix.Close(fd)
		exchange(b, fd, []byte{1})
		for i := range pairs {
			for _, st := range pairOrder(i) {
				toggle(st, on, off)
				rates[st] = append(rates[st], rrWindow(b, fd, d))
			}
		}
	})
	return rates
}

// crrInterleaved is rrInterleaved for crr.
func (tp *topology) crrInterleaved(b *testing.B, pairs int, d time.Duration, on, off func()) (rates [2][]float64) {
	tp.inPod0(b, func() {
		for i := range pairs {
			for _, st := range pairOrder(i) {
				toggle(st, on, off)
				rates[st] = append(rates[st], crrWindow(b, tp.pods[1].addr, d))
			}
		}
	})
	return rates
}

// pinCPU binds the calling (locked) thread to the bench CPU.
func (tp *topology) pinCPU() {
	if tp.cpu < 0 {
		return
	}
	var set unix.CPUSet
	set.Set(tp.cpu)
	unix.SchedSetaffinity(0, &set)
}

// unpinCPU lets the calling thread run anywhere again.
func unpinCPU() {
	var set unix.CPUSet
	for i := range runtime.NumCPU() {
		set.Set(i)
	}
	unix.SchedSetaffinity(0, &set)
}
