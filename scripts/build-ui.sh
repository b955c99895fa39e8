#!/usr/bin/env bash
# Rebuilds the service map (ui/ -> internal/ui/dist, embedded by the Go
# binary) with the versions ui/package-lock.json pins. Needs Node.js 20 and
# npm; the binary itself needs neither.
#
#   scripts/build-ui.sh          install (npm ci) when needed, build
#   scripts/build-ui.sh --check  build into a temporary directory and fail
#                                if it differs from the committed build
#
# The build is deterministic (no content hashes or times in names or
# bytes; checked by building twice), so --check is meaningful.
set -euo pipefail
cd "$(dirname "$0")/../ui"
command -v npm >/dev/null 2>&1 || { echo "build-ui: npm is not installed (Node.js 20 and npm are needed)" >&2; exit 1; }
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
	npm ci --no-audit --no-fund >/dev/null
fi
if [ "${1:-}" = "--check" ]; then
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	npx --no-install vite build --logLevel warn --outDir "$tmp/dist" --emptyOutDir
	if ! diff -r "$tmp/dist" ../internal/ui/dist >/dev/null; then
		diff -r "$tmp/dist" ../internal/ui/dist | head -20 >&2 || true
		echo "build-ui: internal/ui/dist is not the build of ui/: run scripts/build-ui.sh and commit" >&2
		exit 1
	fi
	echo "build-ui: internal/ui/dist matches ui/"
	exit 0
fi
npx --no-install vite build --logLevel warn
echo "build-ui: built internal/ui/dist"
