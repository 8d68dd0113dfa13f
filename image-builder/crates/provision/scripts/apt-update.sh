# `apt-get update`, retried (bounded) while another process holds the lists lock or
# index files fail to download. Parameters: RETRIES.
export DEBIAN_FRONTEND=noninteractive
n=0
while :; do
  n=$((n + 1))
  # apt-get update exits 0 when index files fail to download: treat that as a failure.
  if out=$(apt-get update -q 2>&1) &&
     ! printf '%s\n' "$out" | grep -q -e '^W: Failed to fetch' -e '^E: ' -e 'Some index files failed to download'; then
    printf '%s\n' "$out"; break
  fi
  printf '%s\n' "$out" >&2
  if [ "$n" -ge "$RETRIES" ]; then
    echo "image-builder: apt-get update failed $RETRIES times; giving up" >&2
    exit 1
  fi
  case "$out" in
    *"Could not get lock"*|*"lists/lock"*|*"Unable to lock directory"*) why="the lists lock is held" ;;
    *"Failed to fetch"*|*"index files failed"*) why="index files failed to download" ;;
    *) why="it failed" ;;
  esac
  echo "image-builder: apt-get update: $why; retry $n/$RETRIES in $((n * 3))s" >&2
  sleep $((n * 3))
done
