// Package tproxy is the agent's end of the datapath's transparent L7
// redirect (Cilium's BPF TPROXY, done without iptables): the sockets the
// datapath assigns redirected packets to (bpf_sk_assign), the policy routing
// that delivers those packets locally, and the dialer of the proxies'
// upstream connections.
//
// Everything lives in the node's network namespace (where the pods' host
// veths are): the programs look sockets up there.
//
//   - Listener: a transparent TCP listener (IP_TRANSPARENT, no SO_REUSEPORT)
//     on the wildcard address of its port, IPv4 and IPv6. An accepted
//     connection's local address is the original destination, its remote
//     address the original source; identities come from the ipcache.
//   - UDP: a transparent UDP socket on the wildcard address of its port that
//     reads datagrams with their original destination (IP_RECVORIGDSTADDR)
//     and replies with that destination as the source address (the DNS
//     proxy's side).
//   - Dialer (proxy.Dialer): connects to the original destination from the
//     node with SO_MARK = datapath.ProxyIdentityMark(source identity). The
//     destination's ingress hook judges the connection as the original
//     source (the identity in the mark) and never redirects it again;
//     replies come back to the node's address, so no reply routing or
//     second socket assignment is needed. This is Cilium's identity-in-mark
//     choice rather than a transparent bind to the source's address: a
//     transparently bound upstream would need its replies, addressed to a
//     pod, stolen back from that pod's routing on every packet, and it
//     could collide with the source's own ports. The mark is trusted because
//     only the node's own stack can set it: a packet from a pod or from
//     outside crosses a veth between namespaces, which clears the mark.
//   - Routing: one rule (fwmark ProxyMarkMagic/ProxyMarkMask → table
//     RouteTable) and a local default route per family in that table, so
//     that marked packets for any address are delivered locally.
//     Per-namespace, so parallel instances (one node namespace each) never
//     share or remove each other's; idempotent.
package tproxy

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"

	vnetns "github.com/vishvananda/netns"

	"github.com/bulwark-net/bulwark/internal/identity"
)

// IdentityFunc gives the identity of an address as the datapath's ipcache
// does (a miss is reserved:world).
type IdentityFunc func(netip.Addr) identity.NumericIdentity

// nsRunner runs functions on OS threads that stay in one network namespace,
// so that sockets are created there. Threads are locked for good and never
// return to the Go scheduler's pool in that namespace.
type nsRunner struct {
	path string // "" = the caller's namespace, run inline
	reqs chan func()
	once sync.Once
	done chan struct{}
}

const nsWorkers = 4

func newNSRunner(path string) (*nsRunner, error) {
	r := &nsRunner{path: path}
	if path == "" {
		return r, nil
	}
	r.reqs = make(chan func())
	r.done = make(chan struct{})
	errc := make(chan error, nsWorkers)
	for range nsWorkers {
		go func() {
			runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
			h, err := vnetns.GetFromPath(path)
			if err != nil {
				errc <- fmt.Errorf("open netns %s: %w", path, err)
				return
			}
			err = vnetns.Set(h)
			h.Close()
			if err != nil {
				errc <- fmt.Errorf("enter netns %s: %w", path, err)
				return
			}
			errc <- nil
			for {
				select {
				case fn := <-r.reqs:
					fn()
				case <-r.done:
					return
				}
			}
		}()
	}
	var errs []error
	for range nsWorkers {
		if err := <-errc; err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

// do runs fn in the namespace and waits for it.
func (r *nsRunner) do(fn func() error) error {
	if r.path == "" {
		return fn()
	}
	errc := make(chan error, 1)
	select {
	case r.reqs <- func() { errc <- fn() }:
	case <-r.done:
		return errors.New("tproxy: closed")
	}
	return <-errc
}

func (r *nsRunner) close() {
	if r.done != nil {
		r.once.Do(func() { close(r.done) })
	}
}
