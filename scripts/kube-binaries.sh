#!/usr/bin/env bash
# Builds the real Kubernetes binaries that `bulwark cluster up` and the
# Kubernetes-mode tests run, from the Go module proxy, once, into a cache
# outside the repository:
#
#   $BULWARK_KUBE_CACHE (default ~/.cache/bulwark/kube/v1.37.2)/bin
#     kube          kube-apiserver, kube-controller-manager, kube-scheduler,
#                   kube-proxy, kubelet and kubectl in one multi-call binary (tools/kube),
#                   with a symlink for each name
#     etcd          etcd v3.7.3 (tools/etcd)
#     containerd, containerd-shim-runc-v2, ctr  containerd v2.4.2 (ctr imports
#                   the locally built images)
#     coredns       CoreDNS v1.15.0, the cluster DNS
#     cni/          CNI plugins v1.10.0: bridge, ptp, host-local, loopback
#
# runc comes from Debian (scripts/setup.sh installs it). A binary is rebuilt
# only when its sources (the tools/* module files, or the pinned versions
# here) change. The first build takes about 25 minutes on two cores; later
# runs take a second. Prints the bin directory on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=v1.37.2
CONTAINERD_VERSION=v2.4.2
CNI_PLUGINS_VERSION=v1.10.0
COREDNS_VERSION=v1.15.0
CACHE=${BULWARK_KUBE_CACHE:-${HOME:-/root}/.cache/bulwark/kube/$K8S_VERSION}
BIN=$CACHE/bin
mkdir -p "$BIN/cni"

log() { echo "kube-binaries: $*" >&2; }

# stamp NAME INPUTS... : the cache key of one binary.
stamp() { shift; { echo "$@"; cat "$@" 2>/dev/null; } | sha256sum | cut -c1-16; }

# keyfile NAME: where the cache key of BIN/NAME is kept.
keyfile() { echo "$(dirname "$BIN/$1")/.$(basename "$1").key"; }

# fresh NAME KEY: true when BIN/NAME was built from KEY.
fresh() { local k; k=$(keyfile "$1"); [[ -x $BIN/$1 && -f $k && $(cat "$k") == "$2" ]]; }

build_module() { # NAME DIR LDFLAGS
	local name=$1 dir=$2 ldflags=$3 key
	key=$(stamp "$name" "$dir/go.mod" "$dir/go.sum" "$dir/main.go")
	if fresh "$name" "$key"; then return; fi
	log "building $name from $dir (slow the first time)"
	local start=$SECONDS
	# One retry: a build cache shared with other concurrent builds has
	# been seen to fail an import once ("could not import ... open :");
	# a real compile error fails twice.
	(cd "$dir" && { CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$BIN/$name.tmp" . ||
		CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$BIN/$name.tmp" .; })
	mv -f "$BIN/$name.tmp" "$BIN/$name"
	echo "$key" >"$(keyfile "$name")"
	log "built $name in $((SECONDS - start)) s"
}

install_pkg() { # NAME PACKAGE@VERSION [SUBDIR]
	local name=$1 pkg=$2 sub=${3:-} key
	key=$(echo "$pkg" | sha256sum | cut -c1-16)
	if fresh "$sub$name" "$key"; then return; fi
	log "building $name from $pkg"
	local tmp
	tmp=$(mktemp -d)
	CGO_ENABLED=0 GOBIN=$tmp go install -trimpath -ldflags "-s -w" "$pkg"
	mv -f "$tmp/$name" "$BIN/$sub$name"
	rm -rf "$tmp"
	echo "$key" >"$(keyfile "$sub$name")"
}

v=${K8S_VERSION#v}
build_module kube tools/kube "-s -w \
 -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
 -X k8s.io/component-base/version.gitMajor=${v%%.*} \
 -X k8s.io/component-base/version.gitMinor=$(echo "$v" | cut -d. -f2) \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
for p in kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubectl; do
	ln -sfn kube "$BIN/$p"
done
build_module etcd tools/etcd "-s -w"

install_pkg containerd "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION"
install_pkg containerd-shim-runc-v2 "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
install_pkg ctr "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
install_pkg coredns "github.com/coredns/coredns@$COREDNS_VERSION"
for p in main/bridge main/ptp main/loopback ipam/host-local; do
	install_pkg "${p#*/}" "github.com/containernetworking/plugins/plugins/$p@$CNI_PLUGINS_VERSION" cni/
done

echo "$BIN"
