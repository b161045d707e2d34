#!/usr/bin/env bash
# Builds the Helm CLI from the Go module proxy and prints its path.
#
# The chart in deploy/helm/eligibility-filter is linted and rendered by `make test`
# (tests/deploy/test_helm.py). Helm has no Debian or PyPI package of a current
# version, so it is built from source with `go install` (the Go toolchain fetches
# the module and its dependencies from the Go module proxy, the only source used).
# The binary goes into a cache outside git; once it is there (at the pinned
# version) the script does nothing but print its path. Nothing the chart needs is
# fetched at run time: no `helm repo add`, no chart dependencies.
#
# Usage: scripts/helm.sh            build if needed, print the binary's path
#
# Environment:
#   HELM_CACHE_DIR   where the binary goes (bin/helm-<version>/helm)   [$HOME/.cache/eligibility-filter]
set -euo pipefail

readonly HELM_MODULE="helm.sh/helm/v4/cmd/helm"
readonly HELM_VERSION="v4.3.2"

CACHE_ROOT="${HELM_CACHE_DIR:-${HOME}/.cache/eligibility-filter}"
case "${CACHE_ROOT}" in /*) ;; *) CACHE_ROOT="${PWD}/${CACHE_ROOT}" ;; esac
readonly BIN_DIR="${CACHE_ROOT}/bin/helm-${HELM_VERSION}"
readonly HELM="${BIN_DIR}/helm"

if [[ -x ${HELM} ]]; then
    echo "${HELM}"
    exit 0
fi

# The Go toolchain's own install directory, where a shell's PATH may not reach.
command -v go >/dev/null || PATH="${PATH}:/usr/local/go/bin"
command -v go >/dev/null || { echo "helm.sh: need Go (the go command) to build helm ${HELM_VERSION}" >&2; exit 1; }

mkdir -p "${BIN_DIR}"
echo "helm.sh: building helm ${HELM_VERSION} with go install (a few minutes, once)" >&2
# Built into a temporary directory and moved into place, so that an interrupted
# build never leaves a binary that the check above would take for a finished one.
TMP_BIN="$(mktemp -d "${BIN_DIR}.tmp.XXXXXX")"
trap 'rm -rf "${TMP_BIN}"' EXIT
# CGO off: a static binary that needs no C toolchain. The version is stamped the
# way Helm's own Makefile does, so `helm version` names it.
CGO_ENABLED=0 GOBIN="${TMP_BIN}" go install \
    -ldflags "-X helm.sh/helm/v4/internal/version.version=${HELM_VERSION}" \
    "${HELM_MODULE}@${HELM_VERSION}" >&2
mv "${TMP_BIN}/helm" "${HELM}"
echo "${HELM}"
