// Package datapath loads Bulwark's eBPF programs and maps, attaches them to
// pod interfaces and keeps the maps in sync with the resolved policy.
//
// The BPF objects are compiled from bpf/datapath.c by bpf2go; the generated
// bpf_bpfel.go and bpf_bpfel.o are committed so that `go build` needs no
// clang. Regenerate with `go generate ./internal/datapath`.
package datapath

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -target bpfel -cc clang -cflags "-O2 -g -Wall -Werror" -type bw_endpoint -type bw_ipcache_key -type bw_ipcache_value -type bw_selector_list -type bw_policy_key -type bw_policy_value -type bw_ct_key -type bw_ct_entry -type bw_config -type bw_metric -type bw_event bpf ../../bpf/datapath.c -- -I/usr/include/x86_64-linux-gnu -I../../bpf
