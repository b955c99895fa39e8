package workload

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// freePort returns a port that was free on loopback a moment ago.
func freePort(t *testing.T, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestServes(t *testing.T) {
	cfg := Config{
		Pod:       "demo/web-1",
		HTTPPorts: []int{freePort(t, "tcp")},
		TCPPorts:  []int{freePort(t, "tcp")},
		UDPPorts:  []int{freePort(t, "udp")},
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// Run writes readiness to an fd it then closes: give it its own copy.
	fd, err := syscall.Dup(int(w.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	cfg.ReadyFD = fd
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("readiness %q %v", line, err)
	}

	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/some/path", cfg.HTTPPorts[0]))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"pod=demo/web-1", "method=GET", "path=/some/path", "client=127.0.0.1:"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("HTTP body %q lacks %q", body, want)
		}
	}

	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", cfg.TCPPorts[0]))
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	banner, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(banner, "pod=demo/web-1 client=127.0.0.1:") {
		t.Errorf("TCP banner %q %v", banner, err)
	}
	fmt.Fprintf(c, "ping\n")
	if echo, err := br.ReadString('\n'); err != nil || echo != "ping\n" {
		t.Errorf("TCP echo %q %v, want ping", echo, err)
	}
	c.Close()

	u, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", cfg.UDPPorts[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	u.SetDeadline(time.Now().Add(10 * time.Second))
	u.Write([]byte("echo me"))
	buf := make([]byte, 64)
	n, err := u.Read(buf)
	if err != nil || string(buf[:n]) != "echo me" {
		t.Errorf("UDP echo %q %v", buf[:n], err)
	}
}

func TestArgsRoundTrip(t *testing.T) {
	c := Config{Pod: "a/b", Netns: "/run/netns/x", HTTPPorts: []int{80, 8080}, TCPPorts: []int{5432}, UDPPorts: []int{53}, DNSRecords: "/r.json", DNSPort: 53, ReadyFD: 3}
	got := strings.Join(c.Args(), " ")
	want := "--pod a/b --netns /run/netns/x --http 80,8080 --tcp 5432 --udp 53 --dns-records /r.json --dns-port 53 --ready-fd 3"
	if got != want {
		t.Errorf("args %q\nwant %q", got, want)
	}
	if code := Main([]string{"--http", "0"}); code != 2 {
		t.Errorf("bad port: exit %d, want 2", code)
	}
}
