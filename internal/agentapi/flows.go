package agentapi

// FlowStatus is the observer's health, as `hubble status` shows it.
type FlowStatus struct {
	// Held flows out of Capacity: the ring keeps the most recent ones.
	Held     uint64 `json:"held"`
	Capacity uint64 `json:"capacity"`
	// Seen counts every flow since the agent started.
	Seen uint64 `json:"seen"`
	// LostDatapath counts events the datapath could not queue (its ring
	// buffer was full): no flow exists for them.
	LostDatapath uint64 `json:"lostDatapath"`
	// LostReaders counts flows live readers (observe --follow, the
	// service map) missed because they read too slowly.
	LostReaders uint64 `json:"lostReaders"`
}
