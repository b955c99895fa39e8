package socklb

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/bulwark-net/bulwark/internal/sandbox/cgroup"
	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
)

func TestValidate(t *testing.T) {
	fe := netip.MustParseAddrPort("10.96.0.10:53")
	bad := []Service{
		{Frontend: fe, Proto: 1},
		{Frontend: netip.MustParseAddrPort("10.96.0.10:0"), Proto: UDP},
		{Frontend: fe, Proto: UDP, Backends: []netip.AddrPort{netip.MustParseAddrPort("[fd00::1]:53")}},
		{Frontend: fe, Proto: UDP, Backends: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:0")}},
	}
	for _, s := range bad {
		if err := validate(s); err == nil {
			t.Errorf("%+v accepted", s)
		}
	}
	if err := validate(Service{Frontend: fe, Proto: UDP, Backends: []netip.AddrPort{netip.MustParseAddrPort("10.244.0.5:53")}}); err != nil {
		t.Error(err)
	}
}

// env is a scratch cgroup, pin dir and network namespace (loopback only,
// no routes: a packet that escapes translation has nowhere to go).
type env struct {
	cgroup, pins, netns string
}

func newEnv(t *testing.T) env { return newEnvB(t) }

// newEnvB is newEnv for tests and benchmarks.
func newEnvB(t testing.TB) env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads cgroup BPF programs")
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &sfs); err != nil || sfs.Type != unix.BPF_FS_MAGIC {
		if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, ""); err != nil {
			t.Fatalf("mount bpffs: %v", err)
		}
	}
	b := make([]byte, 4)
	rand.Read(b)
	suffix := hex.EncodeToString(b)
	mnt, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	e := env{
		cgroup: filepath.Join(mnt, "bulwark-socklbtest-"+suffix),
		pins:   filepath.Join("/sys/fs/bpf", "bulwark-socklbtest-"+suffix),
		netns:  "bwk-socklbtest-" + suffix,
	}
	if err := cgroup.Ensure(e.cgroup); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cgroup.Remove(e.cgroup) })
	t.Cleanup(func() { Remove(e.pins) })
	if err := netns.Create(e.netns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Delete(e.netns) })
	h, err := vnetns.GetFromPath(netns.Path(e.netns))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	lo, _ := nl.LinkByName("lo")
	if err := nl.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return e
}

// run starts cmd inside the namespace and the cgroup and returns its
// combined output and exit error.
func (e env) run(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	cg, err := os.Open(e.cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	cmd := exec.Command(args[0], args[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Stdin = strings.NewReader(stdin)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	if err := netns.Do(netns.Path(e.netns), cmd.Start); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	return out.String(), err
}

func TestTranslation(t *testing.T) {
	e := newEnv(t)
	lb, err := Load(Options{CgroupPath: e.cgroup, PinDir: e.pins})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()

	// Backends listen on the namespace's loopback.
	var tcpL net.Listener
	var udpC net.PacketConn
	err = netns.Do(netns.Path(e.netns), func() error {
		var err error
		if tcpL, err = net.Listen("tcp4", "127.0.0.1:0"); err != nil {
			return err
		}
		udpC, err = net.ListenPacket("udp4", "127.0.0.1:0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tcpL.Close()
	defer udpC.Close()
	go func() {
		for {
			c, err := tcpL.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello\n"))
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := udpC.ReadFrom(buf)
			if err != nil {
				return
			}
			udpC.WriteTo(buf[:n], from)
		}
	}()
	tcpBE := netip.MustParseAddrPort(tcpL.Addr().String())
	udpBE := netip.MustParseAddrPort(udpC.LocalAddr().String())
	svcs := []Service{
		{Frontend: netip.MustParseAddrPort("10.200.0.1:80"), Proto: TCP, Backends: []netip.AddrPort{tcpBE}},
		{Frontend: netip.MustParseAddrPort("10.200.0.1:53"), Proto: UDP, Backends: []netip.AddrPort{udpBE}},
	}
	if err := lb.SetServices(svcs); err != nil {
		t.Fatal(err)
	}

	if out, err := e.run(t, "", "nc", "-w", "2", "10.200.0.1", "80"); err != nil || out != "hello\n" {
		t.Fatalf("tcp via ClusterIP: %v %q", err, out)
	}
	// Connected UDP (nc -u) only accepts replies from the address it
	// connected to: recvmsg must restore the ClusterIP.
	if out, err := e.run(t, "ping\n", "nc", "-u", "-w", "1", "10.200.0.1", "53"); !strings.Contains(out, "ping") {
		t.Fatalf("udp via ClusterIP: %v %q", err, out)
	}

	// Reloading reuses the pinned maps and replaces the programs in place.
	lb2, err := Load(Options{CgroupPath: e.cgroup, PinDir: e.pins})
	if err != nil {
		t.Fatal(err)
	}
	defer lb2.Close()
	got, err := lb2.Services()
	if err != nil || len(got) != 2 {
		t.Fatalf("services after reload: %v %v", got, err)
	}
	if out, err := e.run(t, "", "nc", "-w", "2", "10.200.0.1", "80"); err != nil || out != "hello\n" {
		t.Fatalf("tcp after reload: %v %q", err, out)
	}

	// Dropping a service removes its entries.
	if err := lb2.SetServices(svcs[1:]); err != nil {
		t.Fatal(err)
	}
	got, _ = lb2.Services()
	if len(got) != 1 || got[0].Proto != UDP {
		t.Fatalf("after removal: %+v", got)
	}
	// Without translation the ClusterIP is unroutable in this namespace.
	if _, err := e.run(t, "", "nc", "-z", "-w", "1", "10.200.0.1", "80"); err == nil {
		t.Fatal("connect to an untranslated ClusterIP succeeded")
	}

	// Remove detaches: nothing is left pinned.
	lb.Close()
	lb2.Close()
	if err := Remove(e.pins); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(e.pins); !os.IsNotExist(err) {
		t.Fatalf("pins left: %v", err)
	}
	if out, err := e.run(t, "ping\n", "nc", "-u", "-w", "1", "10.200.0.1", "53"); strings.Contains(out, "ping") {
		o, _ := exec.Command("bpftool", "cgroup", "show", e.cgroup).CombinedOutput()
		t.Fatalf("udp still translated after Remove: %v %q\n%s", err, out, o)
	}
}
