# image-builder step runner: each step runs with `sh -eu`, in order; name, exit code
# and seconds go to $RUN/steps.tsv; the first failure is recorded in $RUN/failed-step
# and stops the run with its exit code, so cloud-init marks its result failed.
# Parameters: RUN (the runtime directory). Followed by generated `run_step NAME FILE`
# lines and `all_done`.
mkdir -p "$RUN"
: > "$RUN/steps.tsv"
rm -f "$RUN/failed-step" "$RUN/done"
run_step() {
  echo "image-builder: ==> $1"
  t0=$(date +%s)
  sh -eu "$2"
  rc=$?
  printf '%s\t%s\t%s\n' "$1" "$rc" "$(( $(date +%s) - t0 ))" >> "$RUN/steps.tsv"
  if [ "$rc" -ne 0 ]; then
    echo "$1" > "$RUN/failed-step"
    echo "image-builder: step $1 failed with exit code $rc" >&2
    exit "$rc"
  fi
}
all_done() {
  touch "$RUN/done"
  echo 'image-builder: all steps done'
}
