package socklb

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel -type svc_key -type svc_value -type backend_key -type backend_value -type revnat_key -type revnat_value socklb ../../../bpf/sock/socklb.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
