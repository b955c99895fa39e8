#!/usr/bin/env bash
# Installs what Bulwark needs on a fresh Debian machine (root) and builds
# ./bin/bulwark and ./bin/bulwark-cni (the CNI plugin). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v go >/dev/null 2>&1 || export PATH="$PATH:/usr/local/go/bin"

need=()
for pair in clang:clang llvm-strip:llvm bpftool:bpftool ip:iproute2 iptables:iptables \
            iperf3:iperf3 wrk:wrk nc:netcat-openbsd curl:curl wget:wget \
            runc:runc nsenter:util-linux; do
	cmd=${pair%%:*} pkg=${pair##*:}
	command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
[ -e /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
# `bulwark cluster up`: a static busybox goes into the locally built images.
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
# Debian's chromium drives the service map's browser test (test/ui).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
	echo "setup: installing ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# bpffs for pinned maps and links.
if ! grep -q ' /sys/fs/bpf bpf ' /proc/mounts; then
	mount -t bpf bpf /sys/fs/bpf
fi

mkdir -p bin
go build -o bin/bulwark ./cmd/bulwark
go build -o bin/bulwark-cni ./cmd/bulwark-cni
echo "setup: built bin/bulwark and bin/bulwark-cni"

# The Kubernetes binaries `bulwark cluster up` and the Kubernetes-mode
# tests run (cached; slow only the first time).
bash scripts/kube-binaries.sh
