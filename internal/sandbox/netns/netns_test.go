package netns

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"testing"

	vnetns "github.com/vishvananda/netns"
)

func TestCreateDoDelete(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	b := make([]byte, 4)
	rand.Read(b)
	name := "bwk-nstest-" + hex.EncodeToString(b)
	if err := Create(name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Delete(name) })
	if !Exists(name) {
		t.Fatal("created namespace does not exist")
	}
	if err := Create(name); err == nil {
		t.Fatal("creating an existing namespace succeeded")
	}
	host, err := vnetns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	var inside vnetns.NsHandle
	err = Do(Path(name), func() error {
		var err error
		inside, err = vnetns.Get()
		if err != nil {
			return err
		}
		// A fresh namespace has only loopback.
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		if len(ifs) != 1 || ifs[0].Name != "lo" {
			t.Errorf("interfaces in a new namespace: %v", ifs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer inside.Close()
	if inside.Equal(host) {
		t.Fatal("Do ran in the host namespace")
	}
	// The calling goroutine never left the host namespace.
	now, _ := vnetns.Get()
	defer now.Close()
	if !now.Equal(host) {
		t.Fatal("caller's namespace changed")
	}
	// A sysctl written in the namespace stays there.
	hostBefore, _ := os.ReadFile("/proc/sys/net/ipv4/conf/all/rp_filter")
	want := "2\n"
	if string(hostBefore) == want {
		want = "0\n"
	}
	if err := WriteSysctl(Path(name), "net/ipv4/conf/all/rp_filter", want[:1]); err != nil {
		t.Fatal(err)
	}
	var inNS []byte
	Do(Path(name), func() error {
		inNS, err = os.ReadFile("/proc/sys/net/ipv4/conf/all/rp_filter")
		return err
	})
	if string(inNS) != want {
		t.Errorf("sysctl in namespace %q, want %q", inNS, want)
	}
	if hostAfter, _ := os.ReadFile("/proc/sys/net/ipv4/conf/all/rp_filter"); string(hostAfter) != string(hostBefore) {
		t.Errorf("host sysctl changed from %q to %q", hostBefore, hostAfter)
	}
	if err := Delete(name); err != nil {
		t.Fatal(err)
	}
	if Exists(name) {
		t.Fatal("namespace still exists after Delete")
	}
	if err := Delete(name); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
}
