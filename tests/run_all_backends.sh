#!/usr/bin/env bash
# Runs the test suite once per Keras backend (jax, tensorflow, torch).
# Usage: bash tests/run_all_backends.sh [extra pytest args]
set -uo pipefail
cd "$(dirname "$0")/.."
# TensorFlow's oneDNN CPU kernels segfault intermittently in training steps.
export TF_ENABLE_ONEDNN_OPTS=0
export TF_CPP_MIN_LOG_LEVEL=2
workers="${PYTEST_WORKERS:-2}"
status=0
for backend in jax tensorflow torch; do
  echo "=== KERAS_BACKEND=${backend} ==="
  start=$(date +%s)
  KERAS_BACKEND="${backend}" python -m pytest -q -n "${workers}" tests "$@"
  rc=$?
  echo "=== ${backend}: exit ${rc} in $(( $(date +%s) - start )) s ==="
  if [ "${rc}" -ne 0 ]; then status=1; fi
done
exit "${status}"
