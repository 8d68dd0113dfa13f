#!/bin/bash
# .ci/run while two busy loops at the tests' own priority compete for the cores the whole
# time: the suite must pass the same way on a loaded machine (no test may lean on timing).
#
#   RUNS (1)   how many times in a row; each result line is printed, the first failure stops
set -u
cd "$(dirname "$0")/.."
for n in $(seq "${RUNS:-1}"); do
  loads=()
  for _ in 1 2; do (while :; do :; done) & loads+=($!); done
  start=$(date +%s)
  CI=true bash .ci/run > "/var/tmp/image-builder-under-load-$n.log" 2>&1
  rc=$?
  end=$(date +%s)
  kill "${loads[@]}"
  log=/var/tmp/image-builder-under-load-$n.log
  passed=$(grep -E '^test result' "$log" | awk '{p+=$4} END {print p+0}')
  failed=$(grep -E '^test result' "$log" | awk '{f+=$6} END {print f+0}')
  echo "run $n: rc=$rc wall=$((end-start))s passed=$passed failed=$failed load=$(cut -d' ' -f1-3 /proc/loadavg) log=$log"
  [ "$rc" -eq 0 ] || exit "$rc"
done
