package socklb

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bulwark-net/bulwark/internal/sandbox/netns"
)

// ownCgroup returns this process's cgroup v2 directory.
func ownCgroup(mnt string) (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "0::"); ok {
			return filepath.Join(mnt, rest), nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 entry in /proc/self/cgroup")
}

func joinCgroup(dir string) error {
	return os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644)
}

// BenchmarkUDPConnect measures connect(2) (re-connecting one UDP socket,
// so no socket setup is timed and no packet is sent) in a namespace
// whose only interface is loopback:
//
//	no-program:      outside the cgroup (baseline)
//	program-miss:    inside the cgroup, destination is not a service
//	program-service: inside the cgroup, destination is a ClusterIP
//
// Report the ratios to no-program from the same run.
func BenchmarkUDPConnect(b *testing.B) {
	e := newEnvB(b)
	lb, err := Load(Options{CgroupPath: e.cgroup, PinDir: e.pins})
	if err != nil {
		b.Fatal(err)
	}
	defer lb.Close()
	backend := netip.MustParseAddrPort("127.0.0.1:9")
	svc := netip.MustParseAddrPort("10.200.0.1:53")
	var many []Service
	for i := 0; i < 1000; i++ { // a realistic table, not a single entry
		many = append(many, Service{Frontend: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 201, byte(i >> 8), byte(i)}), 80), Proto: UDP, Backends: []netip.AddrPort{backend}})
	}
	many = append(many, Service{Frontend: svc, Proto: UDP, Backends: []netip.AddrPort{backend}}) // one backend: the same route as program-miss
	if err := lb.SetServices(many); err != nil {
		b.Fatal(err)
	}
	mnt := filepath.Dir(e.cgroup)
	orig, err := ownCgroup(mnt)
	if err != nil {
		b.Fatal(err)
	}
	run := func(b *testing.B, dst netip.AddrPort, inCgroup bool) {
		if inCgroup {
			if err := joinCgroup(e.cgroup); err != nil {
				b.Fatal(err)
			}
			defer joinCgroup(orig)
		}
		err := netns.Do(netns.Path(e.netns), func() error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			sa := &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := unix.Connect(fd, sa); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.Run("no-program", func(b *testing.B) { run(b, backend, false) })
	b.Run("program-miss", func(b *testing.B) { run(b, backend, true) })
	b.Run("program-service", func(b *testing.B) { run(b, svc, true) })
}
