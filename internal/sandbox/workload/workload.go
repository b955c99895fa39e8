// Package workload is the process that stands in for a pod's containers in
// the sandbox: it serves every declared port (HTTP, plain TCP or UDP echo)
// or, for the cluster DNS pod, DNS from a records file. An HTTP port speaks
// HTTP/1.1, h2c (prior knowledge and Upgrade) and gRPC (the standard
// health service and UserService, see grpc.go) on the same socket, told
// apart by the connection preface and the request's content-type.
//
// It runs as `bulwark __workload ...` inside the pod's network namespace and
// the sandbox cgroup, detached (setsid) so it outlives the agent.
package workload

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	vnetns "github.com/vishvananda/netns"

	"github.com/bulwark-net/bulwark/internal/sandbox/dns"
)

// Command is the hidden subcommand name the sandbox starts.
const Command = "__workload"

// Config says what one workload process serves.
type Config struct {
	Netns      string // netns path entered before any socket is created ("" = current)
	Pod        string // "namespace/name", reported in every answer
	HTTPPorts  []int  // TCP ports answering HTTP
	TCPPorts   []int  // TCP ports that accept, write a banner and echo until the peer closes
	UDPPorts   []int  // UDP ports echoing each datagram
	DNSRecords string // if set, serve DNS from this records file on DNSPort (UDP+TCP)
	DNSPort    int
	ReadyFD    int // if >0, "ready\n" is written there once every socket is bound
}

// Args renders cfg as command-line arguments for Main.
func (c Config) Args() []string {
	a := []string{"--pod", c.Pod}
	if c.Netns != "" {
		a = append(a, "--netns", c.Netns)
	}
	if len(c.HTTPPorts) > 0 {
		a = append(a, "--http", joinInts(c.HTTPPorts))
	}
	if len(c.TCPPorts) > 0 {
		a = append(a, "--tcp", joinInts(c.TCPPorts))
	}
	if len(c.UDPPorts) > 0 {
		a = append(a, "--udp", joinInts(c.UDPPorts))
	}
	if c.DNSRecords != "" {
		a = append(a, "--dns-records", c.DNSRecords, "--dns-port", strconv.Itoa(c.DNSPort))
	}
	if c.ReadyFD > 0 {
		a = append(a, "--ready-fd", strconv.Itoa(c.ReadyFD))
	}
	return a
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, p := range v {
		s[i] = strconv.Itoa(p)
	}
	return strings.Join(s, ",")
}

func parseInts(flagName, v string) ([]int, error) {
	if v == "" {
		return nil, nil
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		p, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("--%s: %q is not a port", flagName, f)
		}
		out = append(out, p)
	}
	return out, nil
}

// Main parses args (without the subcommand name) and serves until SIGTERM.
// It returns the process exit status.
func Main(args []string) int {
	fs := flag.NewFlagSet(Command, flag.ContinueOnError)
	var c Config
	var httpP, tcpP, udpP string
	fs.StringVar(&c.Netns, "netns", "", "network namespace path")
	fs.StringVar(&c.Pod, "pod", "", "namespace/name of the pod")
	fs.StringVar(&httpP, "http", "", "comma-separated HTTP ports")
	fs.StringVar(&tcpP, "tcp", "", "comma-separated plain TCP ports")
	fs.StringVar(&udpP, "udp", "", "comma-separated UDP echo ports")
	fs.StringVar(&c.DNSRecords, "dns-records", "", "serve DNS from this records file")
	fs.IntVar(&c.DNSPort, "dns-port", 53, "DNS port")
	fs.IntVar(&c.ReadyFD, "ready-fd", 0, "file descriptor to report readiness on")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var err error
	if c.HTTPPorts, err = parseInts("http", httpP); err == nil {
		if c.TCPPorts, err = parseInts("tcp", tcpP); err == nil {
			c.UDPPorts, err = parseInts("udp", udpP)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "workload:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := Run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "workload:", err)
		return 1
	}
	return 0
}

type listeners struct {
	http []net.Listener
	tcp  []net.Listener
	udp  []net.PacketConn
	dnsU net.PacketConn
	dnsT net.Listener
}

func (l *listeners) close() {
	for _, x := range l.http {
		x.Close()
	}
	for _, x := range l.tcp {
		x.Close()
	}
	for _, x := range l.udp {
		x.Close()
	}
	if l.dnsU != nil {
		l.dnsU.Close()
	}
	if l.dnsT != nil {
		l.dnsT.Close()
	}
}

// bind creates every socket inside the pod namespace, on one thread that
// has entered it; the sockets keep that namespace wherever they are used.
func bind(c Config) (*listeners, error) {
	l := &listeners{}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is discarded
		if c.Netns != "" {
			h, err := vnetns.GetFromPath(c.Netns)
			if err != nil {
				errc <- fmt.Errorf("open netns: %w", err)
				return
			}
			defer h.Close()
			if err := vnetns.Set(h); err != nil {
				errc <- fmt.Errorf("enter netns: %w", err)
				return
			}
		}
		for _, p := range c.HTTPPorts {
			x, err := net.Listen("tcp", ":"+strconv.Itoa(p))
			if err != nil {
				errc <- fmt.Errorf("listen tcp %d: %w", p, err)
				return
			}
			l.http = append(l.http, x)
		}
		for _, p := range c.TCPPorts {
			x, err := net.Listen("tcp", ":"+strconv.Itoa(p))
			if err != nil {
				errc <- fmt.Errorf("listen tcp %d: %w", p, err)
				return
			}
			l.tcp = append(l.tcp, x)
		}
		for _, p := range c.UDPPorts {
			x, err := net.ListenPacket("udp", ":"+strconv.Itoa(p))
			if err != nil {
				errc <- fmt.Errorf("listen udp %d: %w", p, err)
				return
			}
			l.udp = append(l.udp, x)
		}
		if c.DNSRecords != "" {
			var err error
			if l.dnsU, err = net.ListenPacket("udp", ":"+strconv.Itoa(c.DNSPort)); err != nil {
				errc <- fmt.Errorf("listen dns udp: %w", err)
				return
			}
			if l.dnsT, err = net.Listen("tcp", ":"+strconv.Itoa(c.DNSPort)); err != nil {
				errc <- fmt.Errorf("listen dns tcp: %w", err)
				return
			}
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		l.close()
		return nil, err
	}
	return l, nil
}

// Run binds every socket, reports readiness, and serves until ctx ends.
func Run(ctx context.Context, c Config) error {
	l, err := bind(c)
	if err != nil {
		return err
	}
	defer l.close()
	errc := make(chan error, 8)
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	for _, x := range l.http {
		srv := &http.Server{Handler: appHandler(c.Pod, httpHandler(c.Pod)), Protocols: protos, ReadHeaderTimeout: 10 * time.Second}
		go func() { errc <- srv.Serve(x) }()
	}
	for _, x := range l.tcp {
		go func() { errc <- serveTCP(x, c.Pod) }()
	}
	for _, x := range l.udp {
		go func() { errc <- serveUDP(x) }()
	}
	if c.DNSRecords != "" {
		srv := dns.NewServer(c.DNSRecords)
		go func() { errc <- srv.Serve(ctx, l.dnsU, l.dnsT, 250*time.Millisecond) }()
	}
	if c.ReadyFD > 0 {
		f := os.NewFile(uintptr(c.ReadyFD), "ready")
		_, err := f.Write([]byte("ready\n"))
		f.Close()
		if err != nil {
			return fmt.Errorf("report ready: %w", err)
		}
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
}

// httpHandler answers every request with the pod's name, method, path and
// the peer address it saw (so a test can tell which client reached it).
func httpHandler(pod string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Bulwark-Pod", pod)
		fmt.Fprintf(w, "pod=%s method=%s path=%s host=%s client=%s proto=%s\n", pod, r.Method, r.URL.Path, r.Host, r.RemoteAddr, r.Proto)
	})
}

// serveTCP accepts, writes a one-line banner naming the pod and the peer,
// and echoes what the peer sends until it closes (so a test can tell that
// a long-lived connection still carries data both ways).
func serveTCP(l net.Listener, pod string) error {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go func() {
			defer c.Close()
			fmt.Fprintf(c, "pod=%s client=%s\n", pod, c.RemoteAddr())
			_, _ = io.Copy(c, c)
		}()
	}
}

// serveUDP echoes each datagram to its sender.
func serveUDP(pc net.PacketConn) error {
	buf := make([]byte, 65535)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		_, _ = pc.WriteTo(buf[:n], from)
	}
}
