package datapath

// AttachMode is how the datapath's programs are attached to endpoints'
// host-side veths.
type AttachMode string

const (
	// AttachTCX: pinned TCX links (kernel 6.6+); they survive the agent.
	AttachTCX AttachMode = "tcx"
	// AttachLegacyTC: a clsact qdisc with direct-action cls_bpf filters,
	// used when TCX is not supported or Options.ForceLegacyTC is set.
	AttachLegacyTC AttachMode = "legacy"
	// AttachMixed: some endpoints are attached one way and some the other
	// (or one endpoint both ways).
	AttachMixed AttachMode = "mixed"
	// AttachNone: nothing is attached (no endpoint, or an endpoint adopted
	// from a previous agent and not re-attached yet).
	AttachNone AttachMode = "none"
)

// mode reports how one endpoint's programs are attached. Callers hold
// dp.mu.
func (es *endpointState) mode() AttachMode {
	switch tcx := len(es.links) > 0; {
	case tcx && es.legacy:
		return AttachMixed
	case tcx:
		return AttachTCX
	case es.legacy:
		return AttachLegacyTC
	}
	return AttachNone
}

// Mode reports how the programs of the attached endpoints are attached:
// AttachNone when none is, the common mode when all agree, AttachMixed
// otherwise.
func (dp *Datapath) Mode() AttachMode {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	mode := AttachNone
	for _, es := range dp.endpoints {
		switch m := es.mode(); {
		case m == AttachNone || m == mode:
		case mode == AttachNone:
			mode = m
		default:
			return AttachMixed
		}
	}
	return mode
}

// LocalDelivery reports whether pod-to-pod packets are decided at the
// source's hook for both pods and handed to the destination directly
// (Options.DisableLocalDelivery unset).
func (dp *Datapath) LocalDelivery() bool { return !dp.opts.DisableLocalDelivery }

// EndpointMode reports how the programs of endpoint id are attached; false
// when the datapath does not know the endpoint.
func (dp *Datapath) EndpointMode(id uint32) (AttachMode, bool) {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	es := dp.endpoints[id]
	if es == nil {
		return AttachNone, false
	}
	return es.mode(), true
}
