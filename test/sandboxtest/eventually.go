package sandboxtest

import "time"

// FlowDelay bounds how long a datapath event takes to become a flow: the
// agent's event reader wakes for every verdict and at least every 200 ms
// (traces do not wake it), and a loaded CI machine adds scheduling delay.
const FlowDelay = 10 * time.Second

// Eventually calls check until it returns true or timeout passes, and
// returns its last result. Flows are asynchronous: a test that reads them
// right after its traffic asks again for a bounded time instead of
// failing on the first read.
func Eventually(timeout time.Duration, check func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if check() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(250 * time.Millisecond)
	}
}
