#!/usr/bin/env bash
# Runs Bulwark's checks and tests: vet, generated-code freshness, unit,
# kernel (BPF_PROG_TEST_RUN) and privileged end-to-end tests (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v go >/dev/null 2>&1 || export PATH="$PATH:/usr/local/go/bin"
bash scripts/setup.sh

echo "== go vet"
go vet ./...
# test/ciliumref is a module of its own (Cilium's dependency pins): the
# differential tests of internal/policy/difftest build and run it.
(cd test/ciliumref && go vet ./...)

echo "== generated BPF objects match their C sources"
bash scripts/check-generated.sh

echo "== the embedded service map is the build of ui/"
if command -v npm >/dev/null 2>&1; then
	bash scripts/build-ui.sh --check
else
	echo "skipped: npm is not installed"
fi

echo "== go test"
go test -count=1 -timeout 40m ./... 2>&1 | tee /tmp/bulwark-test.log
