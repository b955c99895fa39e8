// Package podtools holds the small programs Bulwark's locally built
// container images carry besides busybox (see internal/cluster/image):
// getent, which busybox lacks. They run as hidden `bulwark` subcommands.
package podtools

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// GetentCommand is the hidden subcommand name.
const GetentCommand = "__getent"

// Getent implements `getent hosts|ahosts|ahostsv4|ahostsv6 NAME...` with
// Go's own resolver (/etc/hosts, then the DNS servers of /etc/resolv.conf
// with its search list), printing like glibc's getent. It returns the exit
// status: 0 found, 1 bad usage, 2 a name not found.
func Getent(args []string, stdout, stderr io.Writer) int {
	if len(args) < 2 {
		fmt.Fprintln(stderr, "Usage: getent hosts|ahosts|ahostsv4|ahostsv6 NAME...")
		return 1
	}
	db := args[0]
	family := ""
	switch db {
	case "hosts", "ahosts":
	case "ahostsv4":
		family = "ip4"
	case "ahostsv6":
		family = "ip6"
	default:
		fmt.Fprintf(stderr, "Unknown database: %s (this getent knows hosts, ahosts, ahostsv4, ahostsv6)\n", db)
		return 1
	}
	r := &net.Resolver{PreferGo: true}
	status := 0
	for _, name := range args[1:] {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		addrs, err := lookup(ctx, r, name, family)
		cancel()
		if err != nil || len(addrs) == 0 {
			status = 2
			continue
		}
		if db == "hosts" {
			fmt.Fprintf(stdout, "%-15s %s\n", addrs[0], name)
			continue
		}
		for _, a := range addrs {
			for _, kind := range []string{"STREAM " + name, "DGRAM", "RAW"} {
				fmt.Fprintf(stdout, "%-15s %s\n", a, kind)
			}
		}
	}
	return status
}

func lookup(ctx context.Context, r *net.Resolver, name, family string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(name); err == nil {
		return []netip.Addr{a}, nil
	}
	network := "ip"
	if family != "" {
		network = family
	}
	addrs, err := r.LookupNetIP(ctx, network, name)
	if err != nil {
		return nil, err
	}
	for i := range addrs {
		addrs[i] = addrs[i].Unmap()
	}
	return addrs, nil
}
