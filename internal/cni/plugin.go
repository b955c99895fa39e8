// Package cni is bulwark-cni, the CNI plugin (spec 1.0.0 and 1.1.0: ADD,
// DEL, CHECK, STATUS, GC, VERSION) that connects a Kubernetes pod to the
// node's Bulwark agent, built on the CNI project's own libraries (skel,
// types/100, version; plugins' ip, ns, ipam).
//
// Standalone mode creates the pod's veth pair: the pod side (CNI_IFNAME)
// gets its addresses as /32 and /128 with default routes via link-local
// gateways (169.254.1.1, fe80::1) that resolve, by a static neighbour, to
// the host side's MAC; the host side, named HostIfName(containerID,
// ifName), gets a /32 (/128) route and a static neighbour per pod address,
// so the node routes to each pod by its own address, as Cilium and Calico
// do. Addresses come from the IPAM plugin (host-local). Chained mode runs
// after ptp or bridge, finds the host side of the pod's veth and passes the
// previous result through unchanged.
//
// In both modes ADD returns only after the agent has attached the endpoint
// (agentapi EndpointAdd), which drops every packet until the pod's policy
// is loaded: the pod is fail-closed from its first packet. In standalone
// mode the agent attaches before the pod has any address or route. When the agent
// refuses, ADD fails and undoes what it created. DEL is idempotent and does
// not wait forever for an agent that is down. ConfList writes the
// configuration the agent installs.
package cni

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/bulwark-net/bulwark/internal/agentapi"
)

// Bounds of each verb. A runtime kills a plugin it has waited too long for
// and retries; these keep the plugin from being the one that hangs.
const (
	addTimeout    = 90 * time.Second
	agentTimeout  = 60 * time.Second // EndpointAdd: attach and load the policy
	delTimeout    = 30 * time.Second
	delAgentWait  = 10 * time.Second // DEL does not wait longer for an agent that is down
	checkTimeout  = 30 * time.Second
	statusTimeout = 10 * time.Second
)

// Main runs the plugin: it reads the CNI environment and stdin, runs the
// verb and exits (the error, if any, printed as CNI's JSON error).
func Main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    cmdAdd,
		Del:    cmdDel,
		Check:  cmdCheck,
		Status: cmdStatus,
		GC:     cmdGC,
	}, supported, "bulwark-cni: Bulwark's CNI plugin (CNI spec "+version.Current()+")")
}

// podArgs are the Kubernetes arguments a CRI runtime passes in CNI_ARGS
// (types.LoadArgs matches the keys to the field names, hence the
// underscores).
type podArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE types.UnmarshallableString
	K8S_POD_NAME      types.UnmarshallableString
	K8S_POD_UID       types.UnmarshallableString
}

// request is what every verb of one attachment starts from.
type request struct {
	args *skel.CmdArgs
	conf *NetConf
	pod  podArgs
}

func load(args *skel.CmdArgs, needPod bool) (*request, error) {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	r := &request{args: args, conf: conf}
	r.pod.IgnoreUnknown = true // runtimes add their own keys
	if err := types.LoadArgs(args.Args, &r.pod); err != nil {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables, "bulwark-cni: CNI_ARGS: "+err.Error(), "")
	}
	if needPod && (r.pod.K8S_POD_NAMESPACE == "" || r.pod.K8S_POD_NAME == "") {
		// The agent finds the pod's policy by its name: without one the
		// endpoint could never leave the drop-all state.
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables,
			"bulwark-cni: CNI_ARGS has no K8S_POD_NAMESPACE and K8S_POD_NAME (is the runtime a Kubernetes CRI runtime?)", "")
	}
	return r, nil
}

func (r *request) agent() *agentapi.Client { return agentapi.NewClient(r.conf.AgentSocket) }

// endpoint is the agent request for this attachment, host side and
// addresses filled in by the caller.
func (r *request) endpoint() agentapi.CNIEndpointRequest {
	return agentapi.CNIEndpointRequest{
		ContainerID:  r.args.ContainerID,
		Netns:        r.args.Netns,
		IfName:       r.args.IfName,
		PodNamespace: string(r.pod.K8S_POD_NAMESPACE),
		PodName:      string(r.pod.K8S_POD_NAME),
		PodUID:       string(r.pod.K8S_POD_UID),
	}
}

func cmdAdd(args *skel.CmdArgs) error {
	r, err := load(args, true)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), addTimeout)
	defer cancel()
	if r.conf.Mode == ModeChained {
		return r.addChained(ctx)
	}
	return r.addStandalone(ctx)
}

func cmdDel(args *skel.CmdArgs) error {
	r, err := load(args, false)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), delTimeout)
	defer cancel()
	if r.conf.Mode == ModeChained {
		return r.delChained(ctx)
	}
	return r.delStandalone(ctx)
}

func cmdCheck(args *skel.CmdArgs) error {
	r, err := load(args, true)
	if err != nil {
		return err
	}
	if r.conf.RawPrevResult == nil {
		return fmt.Errorf("bulwark-cni: CHECK of %s/%s needs the result of ADD (prevResult)", args.ContainerID, args.IfName)
	}
	if err := version.ParsePrevResult(&r.conf.PluginConf); err != nil {
		return fmt.Errorf("bulwark-cni: prevResult: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	if r.conf.Mode == ModeChained {
		return r.checkChained(ctx)
	}
	return r.checkStandalone(ctx)
}

func cmdStatus(args *skel.CmdArgs) error {
	r, err := load(args, false)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	if r.conf.Mode == ModeStandalone {
		if err := invoke.DelegateStatus(ctx, r.conf.IPAM.Type, args.StdinData, nil); err != nil {
			return types.NewError(types.ErrPluginNotAvailable, "bulwark-cni: IPAM plugin "+r.conf.IPAM.Type+" is not ready: "+err.Error(), "")
		}
	}
	st, err := r.agent().WithTimeout(0).CNIStatus(ctx)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "bulwark-cni: node agent: "+err.Error(), "")
	}
	if !st.Ready {
		return types.NewError(types.ErrPluginNotAvailable, "bulwark-cni: node agent is not ready: "+st.Reason, "")
	}
	return nil
}

func cmdGC(args *skel.CmdArgs) error {
	r, err := load(args, false)
	if err != nil {
		return err
	}
	if r.conf.Mode == ModeChained {
		// The primary plugin owns the links and addresses; the agent
		// releases an endpoint when its link disappears.
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), delTimeout)
	defer cancel()
	return r.gcStandalone(ctx)
}

// agentUnreachable reports an agent call that never got an answer: no
// agent on the socket, or none within the deadline.
func agentUnreachable(err error) bool {
	var nr *agentapi.NotRespondingError
	return errors.Is(err, agentapi.ErrNotRunning) || errors.As(err, &nr) || errors.Is(err, context.DeadlineExceeded)
}

// addAgent attaches the endpoint. On an error the agent has attached
// nothing; when the agent did not answer, the plugin also asks it to
// release the endpoint, in case it attached it after the plugin gave up.
func (r *request) addAgent(ctx context.Context, ep agentapi.CNIEndpointRequest) (agentapi.CNIEndpointResponse, error) {
	resp, err := r.agent().WithTimeout(agentTimeout).EndpointAdd(ctx, ep)
	if err == nil {
		return resp, nil
	}
	if agentUnreachable(err) {
		dctx, cancel := context.WithTimeout(context.Background(), delAgentWait)
		defer cancel()
		_ = r.agent().WithTimeout(0).EndpointDel(dctx, ep)
		return resp, types.NewError(types.ErrTryAgainLater, fmt.Sprintf("bulwark-cni: node agent did not attach pod %s/%s: %v", ep.PodNamespace, ep.PodName, err), "")
	}
	return resp, fmt.Errorf("bulwark-cni: node agent refused pod %s/%s: %w", ep.PodNamespace, ep.PodName, err)
}

// delAgent releases the endpoint. An agent that is down or does not answer
// in time is reported on stderr and otherwise ignored: the link is deleted
// anyway, which detaches the datapath from it, and a restarted agent
// forgets endpoints whose link is gone. An agent that answered with an
// error is returned, so the runtime retries the DEL.
func (r *request) delAgent(ctx context.Context, ep agentapi.CNIEndpointRequest) error {
	actx, cancel := context.WithTimeout(ctx, delAgentWait)
	defer cancel()
	err := r.agent().WithTimeout(0).EndpointDel(actx, ep)
	if err == nil {
		return nil
	}
	if agentUnreachable(err) {
		fmt.Fprintf(os.Stderr, "bulwark-cni: DEL %s/%s: node agent unreachable, released the interface and addresses without it: %v\n", ep.ContainerID, ep.IfName, err)
		return nil
	}
	return fmt.Errorf("bulwark-cni: node agent failed to release %s/%s: %w", ep.ContainerID, ep.IfName, err)
}
