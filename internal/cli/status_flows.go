package cli

import (
	"fmt"
	"io"

	"github.com/bulwark-net/bulwark/internal/agentapi"
)

// printFlowStatus is the Flows line of status, as `hubble status` reads:
// current/max flows held, flows seen, events lost.
func printFlowStatus(w io.Writer, fs *agentapi.FlowStatus) {
	if fs == nil {
		fmt.Fprintf(w, "Flows:\tno observer\n")
		return
	}
	pct := 0.0
	if fs.Capacity > 0 {
		pct = 100 * float64(fs.Held) / float64(fs.Capacity)
	}
	fmt.Fprintf(w, "Flows:\tCurrent/Max %d/%d (%.2f%%), %d seen, lost %d in the datapath, %d by slow readers\n",
		fs.Held, fs.Capacity, pct, fs.Seen, fs.LostDatapath, fs.LostReaders)
}
