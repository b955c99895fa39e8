package cli

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/observer"
	"github.com/bulwark-net/bulwark/internal/relay"
)

// newRelayCmd is `bulwark relay`: Hubble Relay's job, one Observer API
// over every node's.
func newRelayCmd() *cobra.Command {
	var peerFlags []string
	var clusterName, listen string
	var allowRemote bool
	cmd := &cobra.Command{
		Use:   "relay --peer ADDR [--peer ADDR...] | --cluster NAME",
		Short: "Serve one Hubble API merging every node agent's flows, as Hubble Relay",
		Long: `Serve the Hubble Observer API on --listen over several node agents' Hubble
APIs (--peer, or every node of a 'bulwark cluster' with --cluster), so that
'hubble observe --server ADDR', 'hubble status' and 'bulwark observe --server
ADDR' see every node at once. Flows are merged by time; a node that is down is
reported (NODE UNAVAILABLE) and the others' flows still come.

A peer is unix:///path, /path or host:port, optionally named: node-1=ADDR.
The relay speaks plaintext: --listen and the peers must be a unix socket or
on loopback unless --allow-remote.`,
		Example: `  bulwark relay --peer unix:///run/bulwark/a/hubble.sock --peer node-2=127.0.0.1:4246 --listen 127.0.0.1:4245
  bulwark relay --cluster demo &
  hubble observe --server 127.0.0.1:4245 --namespace demo`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			peers, err := relayPeers(peerFlags, clusterName)
			if err != nil {
				return err
			}
			if !allowRemote {
				if !relay.IsLocal(listen) {
					return fmt.Errorf("--listen %s: not a unix socket or a loopback address; the relay serves flows without TLS (add --allow-remote to serve it anyway)", listen)
				}
				for _, p := range peers {
					if !relay.IsLocal(p.Address) {
						return fmt.Errorf("--peer %s: not a unix socket or a loopback address; the relay reads peers without TLS (add --allow-remote to read it anyway)", p.Address)
					}
				}
			}
			r, err := relay.New(relay.Options{Peers: peers, Version: Version})
			if err != nil {
				return err
			}
			defer r.Close()
			l, err := relay.Listen(listen)
			if err != nil {
				return fmt.Errorf("--listen: %w", err)
			}
			ctx, cancel := signalContext(cmd)
			defer cancel()
			fmt.Fprintf(cmd.ErrOrStderr(), "relay: serving the Hubble API of %d peer(s) on %s\n", len(peers), l.Addr())
			return r.Serve(ctx, l)
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVar(&peerFlags, "peer", nil, "a node agent's Hubble API: unix:///path, /path, host:port or NAME=ADDR (repeatable)")
	fl.StringVar(&clusterName, "cluster", "", "relay every node agent of this 'bulwark cluster' cluster (--cni bulwark; root only)")
	fl.StringVar(&listen, "listen", observer.DefaultTCPAddress, "where to serve the merged API: host:port, unix:///path or /path")
	fl.BoolVar(&allowRemote, "allow-remote", false, "allow a --listen or --peer address off loopback (plaintext: anyone who reaches it reads every flow)")
	return cmd
}

// relayPeers reads --peer and --cluster.
func relayPeers(peerFlags []string, clusterName string) ([]relay.Peer, error) {
	switch {
	case clusterName != "" && len(peerFlags) > 0:
		return nil, errors.New("--cluster cannot be combined with --peer: the cluster's node agents are the peers")
	case clusterName != "":
		return clusterPeers(clusterName)
	case len(peerFlags) == 0:
		return nil, errors.New("no peers: give --peer ADDR (repeatable) or --cluster NAME")
	}
	var peers []relay.Peer
	for _, s := range peerFlags {
		p, err := relay.ParsePeer(s)
		if err != nil {
			return nil, fmt.Errorf("--peer %q: %w", s, err)
		}
		peers = append(peers, p)
	}
	return peers, nil
}
