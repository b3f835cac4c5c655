#!/usr/bin/env bash
# Set up and run the balancer service on the embedded simulated cluster, with its dashboard.
# Pass --lab to run it on the local libvirt/KVM lab instead (root, installs libvirtd and QEMU).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--lab" ]; then
  bash scripts/setup.sh --test
else
  bash scripts/setup.sh
fi
# demo tokens (the committed settings name the variables, never the secrets)
export BALANCER_TOKEN_ALICE="${BALANCER_TOKEN_ALICE:-demo-admin}"
export BALANCER_TOKEN_BOB="${BALANCER_TOKEN_BOB:-demo-operator}"
export BALANCER_TOKEN_VIEWER="${BALANCER_TOKEN_VIEWER:-demo-viewer}"
echo "demo: dashboard at http://127.0.0.1:8080/  (admin token: $BALANCER_TOKEN_ALICE)"
exec .venv/bin/balancer serve --config config/balancer.yaml "$@"
