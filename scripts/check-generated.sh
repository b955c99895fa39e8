#!/usr/bin/env bash
# Regenerates the bpf2go bindings and objects and fails if they differ from
# what is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v go >/dev/null 2>&1 || export PATH="$PATH:/usr/local/go/bin"
go generate ./...
if ! git diff --exit-code --stat -- '*.go' '*.o'; then
	echo "generated files differ from the committed ones: run 'go generate ./...' and commit" >&2
	exit 1
fi
untracked=$(git ls-files --others --exclude-standard -- '*_bpfel.go' '*_bpfel.o')
if [ -n "$untracked" ]; then
	echo "generated files not committed: $untracked" >&2
	exit 1
fi
