package podtools

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

// NcCommand is the hidden subcommand name.
const NcCommand = "__nc"

// NcScan implements netcat's port check, `nc -z [-v] [-w SECS] HOST PORT`,
// which busybox's nc lacks: connect over TCP, close, and report (with -v)
// in OpenBSD netcat's words. It returns 0 when the port accepted the
// connection, 1 when not, 2 on bad usage.
func NcScan(args []string, stdout, stderr io.Writer) int {
	verbose, timeout := false, 10*time.Second
	var pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if len(a) > 1 && a[0] == '-' {
			for j := 1; j < len(a); j++ {
				switch a[j] {
				case 'z', 'n':
				case 'v':
					verbose = true
				case 'w':
					v := a[j+1:]
					if v == "" {
						if i+1 >= len(args) {
							fmt.Fprintln(stderr, "nc: option -w needs seconds")
							return 2
						}
						i++
						v = args[i]
					}
					s, err := strconv.Atoi(v)
					if err != nil || s < 1 {
						fmt.Fprintf(stderr, "nc: -w %q: not a number of seconds\n", v)
						return 2
					}
					timeout = time.Duration(s) * time.Second
					j = len(a)
				default:
					fmt.Fprintf(stderr, "nc: option -%c is not supported with -z here (supported: -z -v -n -w SECS)\n", a[j])
					return 2
				}
			}
			continue
		}
		pos = append(pos, a)
	}
	if len(pos) != 2 {
		fmt.Fprintln(stderr, "usage: nc -z [-v] [-w SECS] HOST PORT")
		return 2
	}
	host, port := pos[0], pos[1]
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		fmt.Fprintf(stderr, "nc: port %q: not a port number\n", port)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	r := &net.Resolver{PreferGo: true}
	d := net.Dialer{Resolver: r}
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, port))
	if err != nil {
		if verbose {
			reason := err.Error()
			var oe *net.OpError
			if errors.As(err, &oe) && oe.Err != nil {
				reason = oe.Err.Error()
			}
			if errors.Is(err, context.DeadlineExceeded) {
				reason = "Operation timed out"
			}
			fmt.Fprintf(stderr, "nc: connect to %s port %s (tcp) failed: %s\n", host, port, reason)
		}
		return 1
	}
	ip := c.RemoteAddr().(*net.TCPAddr).IP
	c.Close()
	if verbose {
		fmt.Fprintf(stderr, "Connection to %s (%s) %s port [tcp/*] succeeded!\n", host, ip, port)
	}
	return 0
}
