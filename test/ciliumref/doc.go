// Command ciliumref is the CNP/CCNP reference engine of Bulwark's
// differential test: Cilium's own policy engine (pkg/policy of
// github.com/cilium/cilium v1.20.2) evaluating scenarios that the test
// (internal/policy/difftest) generates.
//
// It lives in a module of its own so that Cilium's dependency pins (its
// client-go, for one, is older than Bulwark's) never touch Bulwark's
// go.mod. The two sides exchange JSON: one scenario per input line
// (namespaces, pods with labels, addresses and named ports, outside
// addresses, policy documents as YAML, cells to decide), one result per
// output line (each cell's egress and ingress verdict, or the error that
// made Cilium reject the scenario).
//
//	go run . < scenarios.jsonl > verdicts.jsonl
package main
