package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bulwark-net/bulwark/internal/agent"
	"github.com/bulwark-net/bulwark/internal/cluster"
	"github.com/bulwark-net/bulwark/internal/observer"
	"github.com/bulwark-net/bulwark/internal/observer/printer"
	"github.com/bulwark-net/bulwark/internal/relay"
)

// defaultObserveLast is how many recent flows observe prints when given
// neither --last, --first, --all, --since nor --follow (as hubble).
const defaultObserveLast = 20

// hubbleServerFlags find the Hubble API: --server (several: their flows
// merged), --cluster (every node agent of a 'bulwark cluster' cluster,
// merged), or else the instance's own unix socket, never a default address
// (which could be another instance's).
type hubbleServerFlags struct {
	inst    instanceFlags
	servers []string
	cluster string
}

func (h *hubbleServerFlags) register(cmd *cobra.Command) {
	h.inst.register(cmd)
	cmd.Flags().StringArrayVar(&h.servers, "server", nil,
		"Hubble API address: unix:///path, /path or host:port; repeat it to merge several nodes' flows (default: the instance's own unix socket, root only)")
	cmd.Flags().StringVar(&h.cluster, "cluster", "",
		"read every node agent of this 'bulwark cluster' cluster (--cni bulwark) and merge their flows (root only)")
}

// peers returns the Hubble servers to read: one, or several to merge.
func (h *hubbleServerFlags) peers(cmd *cobra.Command) ([]relay.Peer, error) {
	switch {
	case h.cluster != "" && len(h.servers) > 0:
		return nil, errors.New("--cluster cannot be combined with --server: the cluster's node agents are the servers")
	case h.cluster != "" && cmd.Flags().Changed("instance"):
		return nil, errors.New("--cluster cannot be combined with --instance: a cluster's node agents are its own instances")
	case h.cluster != "":
		return clusterPeers(h.cluster)
	}
	var peers []relay.Peer
	for _, s := range h.servers {
		p, err := relay.ParsePeer(s)
		if err != nil {
			return nil, fmt.Errorf("--server %q: %w", s, err)
		}
		peers = append(peers, p)
	}
	if len(peers) > 0 {
		return peers, nil
	}
	p, err := h.inst.paths()
	if err != nil {
		return nil, err
	}
	sock, err := instanceHubbleSocket(p)
	if err != nil {
		return nil, err
	}
	return []relay.Peer{{Address: "unix://" + sock}}, nil
}

// clusterPeers returns the Hubble sockets of every node agent of cluster
// name, as its recorded state names the nodes. An agent that is not running
// is a peer all the same: the merge reports it unavailable.
func clusterPeers(name string) ([]relay.Peer, error) {
	st, err := cluster.Load(name)
	if errors.Is(err, os.ErrPermission) {
		return nil, fmt.Errorf("--cluster %s: its state is root only: run as root", name)
	}
	if err != nil {
		return nil, fmt.Errorf("--cluster %s: %w", name, err)
	}
	return nodeAgentPeers(st, cluster.NodeAgentOf)
}

// nodeAgentPeers returns one peer per node of st: its agent's Hubble
// socket (the recorded one, else the default in its run directory).
func nodeAgentPeers(st *cluster.State, agentOf func(cluster, node string) cluster.NodeAgent) ([]relay.Peer, error) {
	if st.CNI != cluster.CNIBulwark && st.CNI != cluster.CNIBulwarkChained {
		return nil, fmt.Errorf("--cluster %s: its pod network is %q, without Bulwark agents to read flows from; start one with 'bulwark cluster up --name %s --cni bulwark'", st.Name, st.CNI, st.Name)
	}
	if len(st.Nodes) == 0 {
		return nil, fmt.Errorf("--cluster %s: its state records no nodes", st.Name)
	}
	var peers []relay.Peer
	for _, n := range st.Nodes {
		ag := agentOf(st.Name, n.Name)
		p := agent.NewPaths(agent.PathsOptions{Instance: ag.Instance, RunRoot: ag.RunRoot, StateRoot: ag.StateRoot})
		sock := p.Hubble
		la, err := agent.ReadListenAddrs(p)
		switch {
		case errors.Is(err, os.ErrPermission):
			return nil, fmt.Errorf("--cluster %s: node %s's agent state is root only: run as root", st.Name, n.Name)
		case err == nil && la.HubbleSocket != "":
			sock = la.HubbleSocket
		}
		if _, err := os.Stat(sock); errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("--cluster %s: node %s's Hubble socket %s is root only: run as root", st.Name, n.Name, sock)
		}
		peers = append(peers, relay.Peer{Name: n.Name, Address: "unix://" + sock})
	}
	return peers, nil
}

// instanceHubbleSocket returns the Hubble unix socket an instance serves:
// the one it recorded (its run directory's hubble.sock when it recorded
// none), once it exists.
func instanceHubbleSocket(p agent.Paths) (string, error) {
	sock := p.Hubble
	if la, err := agent.ReadListenAddrs(p); err == nil && la.HubbleSocket != "" {
		sock = la.HubbleSocket
	}
	fi, err := os.Stat(sock)
	switch {
	case errors.Is(err, os.ErrPermission):
		return "", fmt.Errorf("instance %q: its Hubble socket %s is for root only: run as root, or pass --server 127.0.0.1:PORT (the instance's Hubble TCP address, which 'bulwark status' shows)", p.Instance, sock)
	case errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("instance %q: no Hubble socket at %s: is its agent running? (see 'bulwark status --instance %s'; or pass --server)", p.Instance, sock, p.Instance)
	case err != nil:
		return "", fmt.Errorf("instance %q: Hubble socket: %w", p.Instance, err)
	case fi.Mode()&os.ModeSocket == 0:
		return "", fmt.Errorf("instance %q: %s is not a socket", p.Instance, sock)
	}
	return sock, nil
}

// dial connects to the Hubble API: the one server, or an in-process relay
// merging several. It returns the client, a function closing it, and the
// server's name for messages.
func (h *hubbleServerFlags) dial(cmd *cobra.Command) (observerpb.ObserverClient, func(), string, error) {
	peers, err := h.peers(cmd)
	if err != nil {
		return nil, nil, "", err
	}
	if len(peers) == 1 {
		target, err := relay.Target(peers[0].Address)
		if err != nil {
			return nil, nil, "", fmt.Errorf("--server: %w", err)
		}
		conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, nil, "", fmt.Errorf("hubble server %s: %w", target, err)
		}
		return observerpb.NewObserverClient(conn), func() { conn.Close() }, target, nil
	}
	r, err := relay.New(relay.Options{Peers: peers, Version: Version})
	if err != nil {
		return nil, nil, "", err
	}
	client, stop, err := r.Local()
	if err != nil {
		r.Close()
		return nil, nil, "", err
	}
	names := make([]string, len(peers))
	for i, p := range peers {
		names[i] = p.String()
	}
	what := "the merged Hubble APIs of " + strings.Join(names, ", ")
	if h.cluster != "" {
		what = fmt.Sprintf("cluster %s's node agents (%s)", h.cluster, strings.Join(names, ", "))
	}
	return client, func() { stop(); r.Close() }, what, nil
}

// nodeStatusNotice writes a merge's notice that a node could not be read
// (or an error it had) to w and reports whether resp was such a notice.
func nodeStatusNotice(w io.Writer, resp *observerpb.GetFlowsResponse) bool {
	ns := resp.GetNodeStatus()
	if ns == nil {
		return false
	}
	switch ns.GetStateChange() {
	case relaypb.NodeState_NODE_CONNECTED:
		// Bulwark's merge says so (with a message) when a node that was
		// down answers again; Hubble Relay lists the connected nodes at
		// the start of every stream, which is no news.
		if msg := ns.GetMessage(); msg != "" {
			fmt.Fprintf(w, "NODE CONNECTED: %s\n", msg)
		}
	case relaypb.NodeState_NODE_UNAVAILABLE, relaypb.NodeState_NODE_ERROR, relaypb.NodeState_NODE_GONE:
		msg := ns.GetMessage()
		if msg == "" {
			msg = strings.Join(ns.GetNodeNames(), ", ")
		}
		state := strings.ReplaceAll(strings.TrimPrefix(ns.GetStateChange().String(), "NODE_"), "_", " ")
		fmt.Fprintf(w, "NODE %s: %s\n", state, msg)
	}
	return true
}

// hubbleError explains a failed call to the Hubble API; an unreachable
// server most likely means no agent runs.
func hubbleError(what, target string, err error) error {
	addr := strings.TrimPrefix(target, "passthrough:///")
	if strings.HasPrefix(target, "cluster ") || strings.HasPrefix(target, "the merged ") {
		// The merge names each node and its error already.
		if s, ok := status.FromError(err); ok && s.Code() == codes.Unavailable {
			return fmt.Errorf("%s from %s: %s (are the agents running?)", what, addr, s.Message())
		}
		return fmt.Errorf("%s from %s: %w", what, addr, err)
	}
	if status.Code(err) == codes.Unavailable {
		return fmt.Errorf("%s: cannot reach the Hubble API at %s (is the agent running? see 'bulwark status'; or pass --server): %w", what, addr, err)
	}
	return fmt.Errorf("%s from %s: %w", what, addr, err)
}

// signalContext ends on Ctrl-C or SIGTERM.
func signalContext(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(cmdContext(cmd), os.Interrupt, syscall.SIGTERM)
}

// observeFlags are hubble observe's flags.
type observeFlags struct {
	namespaces, fromNamespaces, toNamespaces []string
	pods, fromPods, toPods                   []string
	labels, fromLabels, toLabels             []string
	ips, fromIPs, toIPs                      []string
	ports, fromPorts, toPorts                []string
	identities, fromIdentities, toIdentities []string
	verdicts, protocols, types, nodeNames    []string
	httpMethods, httpPaths, httpStatus       []string
	httpURLs                                 []string
	trafficDirection                         string
	reply                                    bool
	replySet                                 bool

	follow      bool
	last, first uint64
	all         bool
	since       string
	until       string
	output      string
	policyNames bool
}

func newObserveCmd() *cobra.Command {
	var srv hubbleServerFlags
	var f observeFlags
	cmd := &cobra.Command{
		Use:   "observe",
		Short: "Show flows from the Hubble API, filtered as hubble observe does",
		Long: `Show the flows the datapath reported (allowed and denied connections,
drops), from the agent's Hubble API. Filters take hubble's flags: --from-*
match the source, --to-* the destination, and --namespace/--pod/--label/
--ip/--port/--identity either side.`,
		Example: `  bulwark observe --namespace demo
  bulwark observe --namespace demo --verdict DROPPED
  bulwark observe --namespace demo --from-label app=frontend --to-label app=backend
  bulwark observe --namespace demo -o json > flows.json
  bulwark observe --namespace demo --verdict DROPPED --follow --print-policy-names
  bulwark observe --namespace demo --protocol http --http-status 4+ --print-policy-names
  bulwark observe --protocol http --http-method DELETE --http-path '^/api/'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f.replySet = cmd.Flags().Changed("is-reply")
			format, err := printer.ParseFormat(f.output)
			if err != nil {
				return fmt.Errorf("-o: %w", err)
			}
			req, err := f.request(time.Now())
			if err != nil {
				return err
			}
			p := printer.New(cmd.OutOrStdout(), cmd.ErrOrStderr(), printer.Options{
				Format: format, PolicyNames: f.policyNames, Flush: f.follow,
			})
			return srv.follow(cmd, followOptions{what: "observe flows", req: req, each: p.Write, flush: p.Flush})
		},
	}
	srv.register(cmd)
	fl := cmd.Flags()
	directionalFlags(fl.StringSliceVarP, "namespace", "n", "pods in this namespace", &f.namespaces, &f.fromNamespaces, &f.toNamespaces)
	directionalFlags(fl.StringSliceVarP, "pod", "", "this pod ([namespace/]name prefix)", &f.pods, &f.fromPods, &f.toPods)
	directionalFlags(fl.StringArrayVarP, "label", "l", "endpoints matching this label selector", &f.labels, &f.fromLabels, &f.toLabels)
	directionalFlags(fl.StringSliceVarP, "ip", "", "this IP or CIDR", &f.ips, &f.fromIPs, &f.toIPs)
	directionalFlags(fl.StringSliceVarP, "port", "", "this L4 port", &f.ports, &f.fromPorts, &f.toPorts)
	directionalFlags(fl.StringSliceVarP, "identity", "", "this security identity", &f.identities, &f.fromIdentities, &f.toIdentities)
	fl.StringSliceVar(&f.verdicts, "verdict", nil, "show flows with this verdict: FORWARDED, DROPPED, AUDIT, REDIRECTED")
	fl.StringSliceVar(&f.protocols, "protocol", nil, "show flows of this protocol: tcp, udp, sctp, icmp, icmpv4, icmpv6, or http, dns (L7)")
	fl.StringSliceVarP(&f.types, "type", "t", nil, "show events of this type: drop, policy-verdict, trace[:to-endpoint|:from-endpoint], l7")
	fl.StringSliceVar(&f.httpMethods, "http-method", nil, "show L7 HTTP flows with this method (GET, POST, ...)")
	fl.StringSliceVar(&f.httpPaths, "http-path", nil, "show L7 HTTP flows whose URL path matches this regular expression")
	fl.StringSliceVar(&f.httpURLs, "http-url", nil, "show L7 HTTP flows whose URL matches this regular expression")
	fl.StringSliceVar(&f.httpStatus, "http-status", nil, "show L7 HTTP responses with this status: a code (403) or a prefix (4+, 40+)")
	fl.StringSliceVar(&f.nodeNames, "node-name", nil, "show flows seen on this node (glob)")
	fl.StringVar(&f.trafficDirection, "traffic-direction", "", "show flows in this direction: ingress or egress")
	fl.BoolVar(&f.reply, "is-reply", false, "show only replies (true) or only requests (false)")
	fl.BoolVarP(&f.follow, "follow", "f", false, "keep printing flows as they arrive")
	fl.Uint64Var(&f.last, "last", 0, "print the last N matching flows")
	fl.Uint64Var(&f.first, "first", 0, "print the first N matching flows")
	fl.BoolVar(&f.all, "all", false, "print every stored flow")
	fl.StringVar(&f.since, "since", "", "print flows since this time: a duration ago (5m) or an RFC 3339 time")
	fl.StringVar(&f.until, "until", "", "print flows until this time: a duration ago (1m) or an RFC 3339 time")
	fl.StringVarP(&f.output, "output", "o", string(printer.Compact), "output format: compact, table, json, jsonpb, dict")
	fl.BoolVar(&f.policyNames, "print-policy-names", false, "print the policies that allowed or denied each flow")
	return cmd
}

// followOptions describe one GetFlows call of a command.
type followOptions struct {
	what      string // the call in error messages: "observe flows"
	req       *observerpb.GetFlowsRequest
	connected func(target string) // after dialing, before the call; may be nil
	each      func(*observerpb.GetFlowsResponse) error
	flush     func() error // after the stream, even a failed one; may be nil
}

// follow dials the Hubble API and streams o.req to o.each until the
// stream ends, fails, or the user interrupts (Ctrl-C, SIGTERM: not an
// error). A failure of the stream or of o.flush is explained by
// hubbleError.
func (h *hubbleServerFlags) follow(cmd *cobra.Command, o followOptions) error {
	client, closeConn, target, err := h.dial(cmd)
	if err != nil {
		return err
	}
	defer closeConn()
	ctx, cancel := signalContext(cmd)
	defer cancel()
	if o.connected != nil {
		o.connected(target)
	}
	err = streamFlows(ctx, client, o.req, func(resp *observerpb.GetFlowsResponse) error {
		if nodeStatusNotice(cmd.ErrOrStderr(), resp) {
			return nil
		}
		return o.each(resp)
	})
	if o.flush != nil {
		if ferr := o.flush(); err == nil {
			err = ferr
		}
	}
	if err != nil {
		return hubbleError(o.what, target, err)
	}
	return nil
}

// directionalFlags registers hubble's three forms of a filter: --NAME
// (either side, with the shorthand), --from-NAME and --to-NAME; what is
// the help's object ("this L4 port").
func directionalFlags(define func(p *[]string, name, shorthand string, value []string, usage string), name, shorthand, what string, either, from, to *[]string) {
	define(either, name, shorthand, nil, "show flows from or to "+what)
	define(from, "from-"+name, "", nil, "show flows from "+what)
	define(to, "to-"+name, "", nil, "show flows to "+what)
}

// streamFlows calls GetFlows and hands every response to fn until the
// stream ends or ctx does.
func streamFlows(ctx context.Context, c observerpb.ObserverClient, req *observerpb.GetFlowsRequest, fn func(*observerpb.GetFlowsResponse) error) error {
	stream, err := c.GetFlows(ctx, req)
	if err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil // interrupted by the user
			}
			return err
		}
		if err := fn(resp); err != nil {
			return err
		}
	}
}

// conflict rejects a non-directional flag used with its directional forms.
func conflict(name string, either, from, to []string) error {
	if len(either) > 0 && (len(from) > 0 || len(to) > 0) {
		return fmt.Errorf("--%s cannot be combined with --from-%s or --to-%s: use either the undirected form or the directed ones", name, name, name)
	}
	return nil
}

// request turns the flags into a GetFlowsRequest; now anchors durations.
func (f *observeFlags) request(now time.Time) (*observerpb.GetFlowsRequest, error) {
	for _, c := range []struct {
		name           string
		either, fr, to []string
	}{
		{"namespace", f.namespaces, f.fromNamespaces, f.toNamespaces},
		{"pod", f.pods, f.fromPods, f.toPods},
		{"label", f.labels, f.fromLabels, f.toLabels},
		{"ip", f.ips, f.fromIPs, f.toIPs},
		{"port", f.ports, f.fromPorts, f.toPorts},
		{"identity", f.identities, f.fromIdentities, f.toIdentities},
	} {
		if err := conflict(c.name, c.either, c.fr, c.to); err != nil {
			return nil, err
		}
	}
	req := &observerpb.GetFlowsRequest{Follow: f.follow}
	switch {
	case f.first > 0 && f.last > 0:
		return nil, errors.New("--first and --last cannot be combined: choose the oldest or the newest flows")
	case f.all && (f.first > 0 || f.last > 0):
		return nil, errors.New("--all cannot be combined with --first or --last")
	case f.first > 0 && f.follow:
		return nil, errors.New("--first cannot be combined with --follow: following starts from the newest flows")
	case f.first > 0:
		req.First, req.Number = true, f.first
	case f.last > 0:
		req.Number = f.last
	case f.all:
		req.Number = math.MaxUint64
	}
	var err error
	if f.since != "" {
		if req.Since, err = parseFlowTime("--since", f.since, now); err != nil {
			return nil, err
		}
	}
	if f.until != "" {
		if req.Until, err = parseFlowTime("--until", f.until, now); err != nil {
			return nil, err
		}
	}
	if req.Since != nil && req.Until != nil && req.Until.AsTime().Before(req.Since.AsTime()) {
		return nil, fmt.Errorf("--until %s is before --since %s", f.until, f.since)
	}
	if req.Number == 0 && !f.follow && req.Since == nil {
		req.Number = defaultObserveLast
	}

	base := &flowpb.FlowFilter{NodeName: f.nodeNames}
	for _, v := range f.verdicts {
		val, ok := flowpb.Verdict_value[strings.ToUpper(v)]
		if !ok || val == int32(flowpb.Verdict_VERDICT_UNKNOWN) {
			return nil, fmt.Errorf("--verdict %q: want one of FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED, TRANSLATED", v)
		}
		base.Verdict = append(base.Verdict, flowpb.Verdict(val))
	}
	for _, p := range f.protocols {
		switch strings.ToLower(p) {
		case "tcp", "udp", "sctp", "icmp", "icmpv4", "icmpv6", "http", "dns":
			base.Protocol = append(base.Protocol, strings.ToLower(p))
		default:
			return nil, fmt.Errorf("--protocol %q: want one of tcp, udp, sctp, icmp, icmpv4, icmpv6, http, dns", p)
		}
	}
	base.HttpMethod, base.HttpPath, base.HttpUrl, base.HttpStatusCode = f.httpMethods, f.httpPaths, f.httpURLs, f.httpStatus
	if _, err := observer.NewFilter([]*flowpb.FlowFilter{{HttpPath: f.httpPaths, HttpUrl: f.httpURLs, HttpStatusCode: f.httpStatus}}, nil); err != nil {
		return nil, fmt.Errorf("--http-path/--http-url/--http-status: %w", err)
	}
	for _, t := range f.types {
		et, err := parseEventType(t)
		if err != nil {
			return nil, err
		}
		base.EventType = append(base.EventType, et)
	}
	switch strings.ToLower(f.trafficDirection) {
	case "":
	case "ingress":
		base.TrafficDirection = []flowpb.TrafficDirection{flowpb.TrafficDirection_INGRESS}
	case "egress":
		base.TrafficDirection = []flowpb.TrafficDirection{flowpb.TrafficDirection_EGRESS}
	default:
		return nil, fmt.Errorf("--traffic-direction %q: want ingress or egress", f.trafficDirection)
	}
	if f.replySet {
		base.Reply = []bool{f.reply}
	}

	// Namespaces qualify pod names given without one; with no pod to
	// qualify they select the namespace itself.
	fromPods, err := qualifyPods("from-pod", f.fromPods, f.fromNamespaces, f.namespaces)
	if err != nil {
		return nil, err
	}
	toPods, err := qualifyPods("to-pod", f.toPods, f.toNamespaces, f.namespaces)
	if err != nil {
		return nil, err
	}
	var eitherPods []string
	switch {
	case len(f.pods) > 0:
		if eitherPods, err = qualifyPods("pod", f.pods, f.namespaces, nil); err != nil {
			return nil, err
		}
	case len(f.fromPods)+len(f.toPods) == 0:
		eitherPods = namespacePods(f.namespaces)
	}
	src := side{pods: fromPods, labels: f.fromLabels, ips: f.fromIPs, ports: f.fromPorts, identities: f.fromIdentities}
	dst := side{pods: toPods, labels: f.toLabels, ips: f.toIPs, ports: f.toPorts, identities: f.toIdentities}
	either := side{pods: eitherPods, labels: f.labels, ips: f.ips, ports: f.ports, identities: f.identities}
	if err := src.apply(base, true); err != nil {
		return nil, err
	}
	if err := dst.apply(base, false); err != nil {
		return nil, err
	}
	if either.empty() {
		if !isEmptyFilter(base) {
			req.Whitelist = []*flowpb.FlowFilter{base}
		}
		return req, nil
	}
	// Undirected criteria: one filter with them on the source side, one on
	// the destination side; a flow matching either is shown.
	for _, asSource := range []bool{true, false} {
		ff := cloneFilter(base)
		if err := either.apply(ff, asSource); err != nil {
			return nil, err
		}
		req.Whitelist = append(req.Whitelist, ff)
	}
	return req, nil
}

// qualifyPods prefixes pod names without a namespace with the namespace
// given (one only: several would be ambiguous); namespaces alone, with no
// pod, select every pod in them.
func qualifyPods(flag string, pods, namespaces, fallback []string) ([]string, error) {
	ns := namespaces
	if len(ns) == 0 {
		ns = fallback
	}
	if len(pods) == 0 {
		if len(namespaces) > 0 {
			return namespacePods(namespaces), nil
		}
		return nil, nil
	}
	out := make([]string, 0, len(pods))
	for _, p := range pods {
		switch {
		case strings.Contains(p, "/"):
			out = append(out, p)
		case len(ns) == 1:
			out = append(out, ns[0]+"/"+p)
		case len(ns) > 1:
			return nil, fmt.Errorf("--%s %q: several namespaces given; write the pod as namespace/name", flag, p)
		default:
			out = append(out, p)
		}
	}
	return out, nil
}

func namespacePods(namespaces []string) []string {
	out := make([]string, 0, len(namespaces))
	for _, ns := range namespaces {
		out = append(out, ns+"/")
	}
	return out
}

// side holds the criteria of one end of a flow.
type side struct {
	pods, labels, ips, ports, identities []string
}

func (s side) empty() bool {
	return len(s.pods)+len(s.labels)+len(s.ips)+len(s.ports)+len(s.identities) == 0
}

func (s side) apply(ff *flowpb.FlowFilter, source bool) error {
	var ids []uint32
	for _, v := range s.identities {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return fmt.Errorf("--identity %q: not a numeric identity", v)
		}
		ids = append(ids, uint32(n))
	}
	for _, v := range s.ports {
		if _, err := strconv.ParseUint(v, 10, 16); err != nil {
			return fmt.Errorf("--port %q: not a port number 0-65535", v)
		}
	}
	if source {
		ff.SourcePod = append(ff.SourcePod, s.pods...)
		ff.SourceLabel = append(ff.SourceLabel, s.labels...)
		ff.SourceIp = append(ff.SourceIp, s.ips...)
		ff.SourcePort = append(ff.SourcePort, s.ports...)
		ff.SourceIdentity = append(ff.SourceIdentity, ids...)
	} else {
		ff.DestinationPod = append(ff.DestinationPod, s.pods...)
		ff.DestinationLabel = append(ff.DestinationLabel, s.labels...)
		ff.DestinationIp = append(ff.DestinationIp, s.ips...)
		ff.DestinationPort = append(ff.DestinationPort, s.ports...)
		ff.DestinationIdentity = append(ff.DestinationIdentity, ids...)
	}
	return nil
}

func cloneFilter(ff *flowpb.FlowFilter) *flowpb.FlowFilter {
	c := ff
	out := &flowpb.FlowFilter{
		SourcePod: c.SourcePod, SourceLabel: c.SourceLabel, SourceIp: c.SourceIp, SourcePort: c.SourcePort,
		SourceIdentity: c.SourceIdentity, DestinationPod: c.DestinationPod, DestinationLabel: c.DestinationLabel,
		DestinationIp: c.DestinationIp, DestinationPort: c.DestinationPort, DestinationIdentity: c.DestinationIdentity,
		Verdict: c.Verdict, Protocol: c.Protocol, EventType: c.EventType, NodeName: c.NodeName,
		TrafficDirection: c.TrafficDirection, Reply: c.Reply,
		HttpMethod: c.HttpMethod, HttpPath: c.HttpPath, HttpUrl: c.HttpUrl, HttpStatusCode: c.HttpStatusCode,
	}
	// Appends to the copy must not write into the original's arrays.
	for _, s := range []*[]string{&out.SourcePod, &out.SourceLabel, &out.SourceIp, &out.SourcePort,
		&out.DestinationPod, &out.DestinationLabel, &out.DestinationIp, &out.DestinationPort} {
		*s = append([]string(nil), *s...)
	}
	out.SourceIdentity = append([]uint32(nil), out.SourceIdentity...)
	out.DestinationIdentity = append([]uint32(nil), out.DestinationIdentity...)
	return out
}

func isEmptyFilter(ff *flowpb.FlowFilter) bool {
	return len(ff.SourcePod)+len(ff.SourceLabel)+len(ff.SourceIp)+len(ff.SourcePort)+len(ff.SourceIdentity)+
		len(ff.DestinationPod)+len(ff.DestinationLabel)+len(ff.DestinationIp)+len(ff.DestinationPort)+len(ff.DestinationIdentity)+
		len(ff.Verdict)+len(ff.Protocol)+len(ff.EventType)+len(ff.NodeName)+len(ff.TrafficDirection)+len(ff.Reply)+
		len(ff.HttpMethod)+len(ff.HttpPath)+len(ff.HttpUrl)+len(ff.HttpStatusCode) == 0
}

// traceSubTypes are the trace sub-types --type trace:NAME accepts (Cilium's
// numbers, hubble's names).
var traceSubTypes = map[string]int32{"to-endpoint": 0, "to-proxy": 1, "to-stack": 3, "from-endpoint": 5}

// parseEventType reads --type: drop, policy-verdict, trace, optionally
// trace:to-endpoint / :to-proxy / :to-stack / :from-endpoint, or a monitor
// type number.
func parseEventType(s string) (*flowpb.EventTypeFilter, error) {
	name, sub, hasSub := strings.Cut(strings.ToLower(s), ":")
	et := &flowpb.EventTypeFilter{}
	switch name {
	case "drop":
		et.Type = observer.MonitorTypeDrop
	case "policy-verdict":
		et.Type = observer.MonitorTypePolicyVerdict
	case "trace":
		et.Type = observer.MonitorTypeTrace
	case "l7":
		et.Type = observer.MonitorTypeAccessLog
	default:
		n, err := strconv.ParseInt(name, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("--type %q: want drop, policy-verdict, trace[:to-endpoint|:to-proxy|:to-stack|:from-endpoint] or a monitor type number", s)
		}
		et.Type = int32(n)
	}
	if hasSub {
		n, named := traceSubTypes[sub]
		switch {
		case et.Type == observer.MonitorTypeTrace && named:
			et.MatchSubType, et.SubType = true, n
		default:
			n, err := strconv.ParseInt(sub, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("--type %q: unknown sub-type %q", s, sub)
			}
			et.MatchSubType, et.SubType = true, int32(n)
		}
	}
	return et, nil
}

// parseFlowTime reads a duration ago ("5m") or an RFC 3339 time.
func parseFlowTime(flag, s string, now time.Time) (*timestamppb.Timestamp, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return nil, fmt.Errorf("%s %q: a duration must be positive (it counts back from now)", flag, s)
		}
		return timestamppb.New(now.Add(-d)), nil
	}
	for _, layout := range []string{time.RFC3339Nano, time.RFC3339, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return timestamppb.New(t), nil
		}
	}
	return nil, fmt.Errorf("%s %q: want a duration (5m, 1h30m) or an RFC 3339 time (2006-01-02T15:04:05Z)", flag, s)
}
