package ui

import (
	"fmt"
	"strings"

	"github.com/bulwark-net/bulwark/internal/offline/check"
)

// TraceState answers a TraceQuery from a policy state with the offline
// checker's lookup and `policy trace` text: the same tables the datapath
// loads, explained the same way. Query problems are BadQueryErrors.
func TraceState(st *check.State, q TraceQuery) (Trace, error) {
	src, err := st.Peer(q.Src)
	if err != nil {
		return Trace{}, &BadQueryError{Err: fmt.Errorf("trace: src: %w", err)}
	}
	dst, err := st.Peer(q.Dst)
	if err != nil {
		return Trace{}, &BadQueryError{Err: fmt.Errorf("trace: dst: %w", err)}
	}
	res, err := st.CheckPeers(src, dst, q.Port, q.Protocol)
	if err != nil {
		return Trace{}, &BadQueryError{Err: fmt.Errorf("trace: %w", err)}
	}
	var b strings.Builder
	if err := st.WriteTrace(&b, res); err != nil {
		return Trace{}, fmt.Errorf("trace: %w", err)
	}
	return Trace{Verdict: res.Verdict, Egress: res.Egress, Ingress: res.Ingress, Policies: res.Policies, Text: b.String()}, nil
}
