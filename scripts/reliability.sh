#!/usr/bin/env bash
# Run the reliability tests and regenerate the table of docs/reliability.md from their outcomes.
#   bash scripts/reliability.sh          the normal-suite versions (minutes)
#   bash scripts/reliability.sh --long   also the long randomised versions (opt-in marker)
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS="${YOLO_BATCH_RELIABILITY_OUT:-build/reliability.json}"
export YOLO_BATCH_RELIABILITY_OUT="$RESULTS"
TESTS=(tests/test_reliability_storage.py tests/test_reliability_process.py
       tests/test_actor_faults.py tests/test_liveness.py tests/test_actor_memory.py
       tests/test_hostile_inputs.py tests/test_security.py tests/test_preflight.py
       tests/test_lease.py tests/test_planning.py tests/test_source_duplicates.py)
MARK="not long"
if [ "${1:-}" = "--long" ]; then
    MARK="long or not long"
fi
.venv/bin/python -m pytest -q -m "$MARK" "${TESTS[@]}"
.venv/bin/python scripts/reliability_table.py "$RESULTS" docs/reliability.md
