package cli

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/cluster"
	"github.com/bulwark-net/bulwark/internal/cluster/podtools"
)

// newClusterCmd is `bulwark cluster up|env|down`: a real Kubernetes
// cluster on this machine (see internal/cluster).
func newClusterCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Run a real Kubernetes cluster on this machine (up, env, down)",
	}
	var name string
	cmd.PersistentFlags().StringVar(&name, "name", "default", "cluster name")

	var o cluster.Options
	var files []string
	up := &cobra.Command{
		Use:   "up",
		Short: "Start a cluster: control plane, N nodes (kubelet, containerd, kube-proxy), CNI and CoreDNS",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Name = name
			o.Manifests = files
			out := cmd.ErrOrStderr()
			start := time.Now()
			o.Log = func(f string, a ...any) {
				fmt.Fprintf(out, "cluster %s: %s\n", name, fmt.Sprintf(f, a...))
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			st, err := cluster.Up(ctx, o)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "cluster %s: up with %d node(s) in %.1fs; use it with:\n  eval \"$(bulwark cluster env --name %s)\"\n",
				name, len(st.Nodes), time.Since(start).Seconds(), name)
			return nil
		},
	}
	up.Flags().IntVar(&o.Nodes, "nodes", 1, "number of nodes")
	up.Flags().StringArrayVarP(&files, "filename", "f", nil, "manifest to apply once the cluster is up (repeatable)")
	up.Flags().StringVar(&o.CNI, "cni", cluster.CNIPtp, "pod network: ptp (standard ptp + host-local plugins), bulwark (Bulwark's agent and CNI plugin, its own veth and IPAM) or bulwark-chained (bulwark-cni chained after ptp + host-local)")
	up.Flags().StringVar(&o.Agents, "agents", "", "with --cni bulwark[-chained], how the agents run: daemonset (default: the shipped manifests, deploy/manifests/bulwark.yaml, as a DaemonSet pod per node) or process (a process beside each kubelet)")
	up.Flags().StringVar(&o.BinDir, "kube-bin", "", "directory of the Kubernetes binaries (default: scripts/kube-binaries.sh's cache)")
	up.Flags().StringVar(&o.BulwarkCNI, "bulwark-cni", "", "bulwark-cni plugin for --cni bulwark (default: beside this executable)")
	up.Flags().BoolVar(&o.KeepOnFailure, "keep-on-failure", false, "leave a cluster that failed to come up in place for inspection (remove it with cluster down)")
	up.Flags().DurationVar(&o.Timeout, "timeout", 5*time.Minute, "give up (and remove the partial cluster) after this long")

	env := &cobra.Command{
		Use:   "env",
		Short: "Print shell exports (KUBECONFIG, PATH with kubectl) for the cluster",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := cluster.Env(name)
			if err != nil {
				return err
			}
			fmt.Fprint(cmd.OutOrStdout(), s)
			return nil
		},
	}
	down := &cobra.Command{
		Use:   "down",
		Short: "Stop the cluster and remove everything it made",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cluster.Down(name); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "cluster %s: removed\n", name)
			return nil
		},
	}
	cmd.AddCommand(up, env, down)
	return cmd
}

// newGetentCmd is getent inside the cluster's locally built images.
func newGetentCmd() *cobra.Command {
	return &cobra.Command{
		Use:                podtools.GetentCommand,
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := podtools.Getent(args, cmd.OutOrStdout(), cmd.ErrOrStderr()); code != 0 {
				return &ExitError{Code: code}
			}
			return nil
		},
	}
}

// newNcCmd is `nc -z` (a port check) inside the cluster's locally built
// images.
func newNcCmd() *cobra.Command {
	return &cobra.Command{
		Use:                podtools.NcCommand,
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := podtools.NcScan(args, cmd.OutOrStdout(), cmd.ErrOrStderr()); code != 0 {
				return &ExitError{Code: code}
			}
			return nil
		},
	}
}
