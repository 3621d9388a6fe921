#!/usr/bin/env bash
# Runs the test suite once per Keras backend (jax, tensorflow, torch), then once
# more, on one backend, over the test files that read big_vision fixtures, with
# the fixtures hidden: a user's clone has no ../shared, and every fixture test
# must skip there, not fail.
# Usage: bash tests/run_all_backends.sh [extra pytest args]
set -uo pipefail
cd "$(dirname "$0")/.."
# TensorFlow keeps its own kernel choice (oneDNN on x86 Linux), as users get it;
# tests/test_tensorflow_onednn.py checks our graphs against its known 2.21 bug.
export TF_CPP_MIN_LOG_LEVEL=2
workers="${PYTEST_WORKERS:-2}"
status=0
summaries="$(mktemp)"
trap 'rm -f "${summaries}"' EXIT

# Runs pytest, keeps its closing line for the total printed at the end.
run_pytest() {
  local log
  log="$(mktemp)"
  python -m pytest "$@" 2>&1 | tee "${log}"
  local rc="${PIPESTATUS[0]}"
  # pytest's closing line: the last one that counts results (a library may
  # still print at interpreter exit, after it).
  grep -E '^=*[[:space:]]*[0-9]+ (passed|failed|skipped|errors?|deselected)' "${log}" \
    | tail -n 1 >>"${summaries}"
  rm -f "${log}"
  return "${rc}"
}
for backend in jax tensorflow torch; do
  echo "=== KERAS_BACKEND=${backend} ==="
  start=$(date +%s)
  KERAS_BACKEND="${backend}" run_pytest -q -n "${workers}" tests "$@"
  rc=$?
  echo "=== ${backend}: exit ${rc} in $(( $(date +%s) - start )) s ==="
  if [ "${rc}" -ne 0 ]; then status=1; fi
done

# A user's clone: the files that use fixtures, with SCALEVIT_FIXTURES pointing to
# a folder that does not exist (the other files never look for fixtures).
backend="${SCALEVIT_NO_FIXTURES_BACKEND:-jax}"
# (Any mention of fixtures, so a test that builds a fixture path by hand is
# included too.)
mapfile -t fixture_files < <(grep -rliE --include='test_*.py' \
  'fixtures|load_fixture|fixture_path|fixture_names|bv_manifest' tests | sort)
if [ "${#fixture_files[@]}" -gt 0 ]; then
  absent="${TMPDIR:-/tmp}/scalevit-fixtures-absent-$$"
  echo "=== fixtures hidden (SCALEVIT_FIXTURES=${absent}), KERAS_BACKEND=${backend}: ${#fixture_files[@]} files ==="
  start=$(date +%s)
  # SCALEVIT_FIXTURE_TESTS_ONLY (tests/conftest.py) deselects the tests of these
  # files that never reach a fixture: they ran above already.
  SCALEVIT_FIXTURES="${absent}" SCALEVIT_FIXTURE_TESTS_ONLY=1 KERAS_BACKEND="${backend}" \
    run_pytest -q -n "${workers}" "${fixture_files[@]}" "$@"
  rc=$?
  # Exit 5: no test selected (e.g. by the extra arguments); nothing failed.
  if [ "${rc}" -eq 5 ]; then rc=0; fi
  echo "=== fixtures hidden: exit ${rc} in $(( $(date +%s) - start )) s ==="
  if [ "${rc}" -ne 0 ]; then status=1; fi
fi

# One closing line over every pass (pytest's own closing lines are per pass).
count() { grep -oE "[0-9]+ $1" "${summaries}" | awk '{s += $1} END {print s + 0}'; }
failed=$(( $(count failed) + $(count errors?) ))
echo "total: $(count passed) passed, ${failed} failed, $(count skipped) skipped"
exit "${status}"
