package agent

import "github.com/bulwark-net/bulwark/internal/agentapi"

// flowStatus reads the observer's counters and the datapath's lost-event
// counter; nil when the agent has no observer.
func (n *node) flowStatus() *agentapi.FlowStatus {
	if n.events == nil || n.events.obs == nil {
		return nil
	}
	ring := n.events.obs.Ring()
	held, seen := ring.Stats()
	return &agentapi.FlowStatus{
		Held: held, Capacity: uint64(ring.Capacity()), Seen: seen,
		LostDatapath: datapathMetrics{n.dp}.EventsLost(),
		LostReaders:  ring.Lost(),
	}
}
