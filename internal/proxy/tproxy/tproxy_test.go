package tproxy

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulwark-net/bulwark/internal/datapath"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/proxy"
)

// testNetns creates a network namespace of its own (lo up with one
// more address per family), removed at cleanup.
func testNetns(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	b := make([]byte, 4)
	rand.Read(b)
	name := "bwtp-" + hex.EncodeToString(b)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run("ip", "-n", name, "link", "set", "lo", "up")
	run("ip", "-n", name, "addr", "add", "10.77.0.1/32", "dev", "lo")
	run("ip", "-n", name, "addr", "add", "fd77::1/128", "dev", "lo", "nodad")
	return "/run/netns/" + name
}

func ids(a netip.Addr) identity.NumericIdentity {
	if a.Is4() {
		return 1234
	}
	return 4321
}

func TestRoutingIsIdempotentAndRemovable(t *testing.T) {
	ns := testNetns(t)
	for range 2 {
		if v6, err := EnsureRouting(ns); err != nil || !v6 {
			t.Fatalf("ipv6 %v: %v", v6, err)
		}
	}
	name := strings.TrimPrefix(ns, "/run/netns/")
	for _, fam := range []string{"-4", "-6"} {
		out, _ := exec.Command("ip", fam, "-n", name, "rule").CombinedOutput()
		if n := strings.Count(string(out), "lookup 2004"); n != 1 {
			t.Fatalf("%s rules: %d for table 2004, want 1:\n%s", fam, n, out)
		}
		out, _ = exec.Command("ip", fam, "-n", name, "route", "show", "table", "2004").CombinedOutput()
		if !strings.Contains(string(out), "local default dev lo") {
			t.Fatalf("%s table 2004: %s", fam, out)
		}
	}
	if err := RemoveRouting(ns); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command("ip", "-n", name, "rule").CombinedOutput()
	if strings.Contains(string(out), "2004") {
		t.Fatalf("rule left after RemoveRouting:\n%s", out)
	}
	if err := RemoveRouting(ns); err != nil {
		t.Fatalf("second remove: %v", err)
	}
}

// inNS runs fn on a thread in ns (for the test's clients).
func inNS(t *testing.T, ns string, fn func() error) {
	t.Helper()
	r, err := newNSRunner(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	if err := r.do(fn); err != nil {
		t.Fatal(err)
	}
}

func TestListenerAcceptsWithFlowAndDialerMarks(t *testing.T) {
	ns := testNetns(t)
	l, err := Listen(Options{NetNS: ns, Identities: ids})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Port() == 0 {
		t.Fatal("no port")
	}
	for _, dst := range []netip.Addr{netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("fd77::1")} {
		var c net.Conn
		inNS(t, ns, func() error {
			var err error
			c, err = net.DialTimeout("tcp", netip.AddrPortFrom(dst, l.Port()).String(), 2*time.Second)
			return err
		})
		sc, f, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		want := proxy.Flow{Src: c.LocalAddr().(*net.TCPAddr).AddrPort(), Dst: netip.AddrPortFrom(dst, l.Port()),
			Protocol: resolved.ProtoTCP, SrcIdentity: ids(dst), DstIdentity: ids(dst)}
		if f != want {
			t.Fatalf("flow %+v, want %+v", f, want)
		}
		sc.Close()
		c.Close()
	}

	// The dialer connects from the namespace with the identity mark.
	d, err := NewDialer(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	up, err := d.DialUpstream(t.Context(), proxy.Flow{Dst: netip.AddrPortFrom(netip.MustParseAddr("10.77.0.1"), l.Port()),
		Protocol: resolved.ProtoTCP, SrcIdentity: 1<<24 | 5})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	rc, _ := up.(*net.TCPConn).SyscallConn()
	var mark int
	rc.Control(func(fd uintptr) { mark, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
	if uint32(mark) != datapath.ProxyIdentityMark(1<<24|5) {
		t.Fatalf("upstream mark %#x, want %#x", mark, datapath.ProxyIdentityMark(1<<24|5))
	}
	if _, _, err := l.Accept(); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, _, err := l.Accept(); err == nil {
		t.Fatal("accept after close")
	}
}

func TestUDPReadsOriginalDestinationAndRepliesFromIt(t *testing.T) {
	ns := testNetns(t)
	u, err := ListenUDP(Options{NetNS: ns, Identities: ids})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for i, dst := range []netip.Addr{netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("fd77::1")} {
		to := netip.AddrPortFrom(dst, u.Port())
		var c *net.UDPConn
		inNS(t, ns, func() error {
			var err error
			c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
			return err
		})
		defer c.Close()
		// UDP may lose a datagram on a loaded machine: resend until the
		// socket reads one, and fail (never hang) after 10 s.
		s := u.Sockets()[i]
		buf := make([]byte, 64)
		type read struct {
			n   int
			f   proxy.Flow
			err error
		}
		got := make(chan read, 1)
		go func() {
			n, f, err := s.ReadFrom(buf)
			got <- read{n, f, err}
		}()
		var r read
		deadline := time.After(10 * time.Second)
	send:
		for {
			if _, err := c.Write([]byte("q")); err != nil {
				t.Fatal(err)
			}
			select {
			case r = <-got:
				break send
			case <-time.After(500 * time.Millisecond):
			case <-deadline:
				u.Close()
				t.Fatalf("no datagram to %s read by the transparent socket in 10 s", to)
			}
		}
		n, f, err := r.n, r.f, r.err
		if err != nil {
			t.Fatal(err)
		}
		if string(buf[:n]) != "q" || f.Dst != to || f.Src != c.LocalAddr().(*net.UDPAddr).AddrPort() || f.Protocol != resolved.ProtoUDP || f.SrcIdentity != ids(dst) {
			t.Fatalf("datagram %q flow %+v", buf[:n], f)
		}
		if err := s.Reply([]byte("a"), f); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil || string(buf[:n]) != "a" || netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) != to {
			t.Fatalf("reply %q from %s (%v), want from %s", buf[:n], from, err, to)
		}
	}
}
