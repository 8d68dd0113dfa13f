# The bake's boot-time watcher, started from bootcmd in its own transient unit (so no
# cloud-init stage waits for it): wait for cloud-init to finish, then run the finisher.
# If provisioning broke before the finisher was written, print the fallback report on
# the console and power off, so a bake never waits for its timeout.
# Arguments: RESULT_JSON TIMEOUT_SECS FINISHER FINISHER_CONFIG FALLBACK_REPORT
i=0
while [ ! -e "$1" ] && [ "$i" -lt "$2" ]; do sleep 1; i=$((i + 1)); done
if [ -f "$3" ]; then exec python3 "$3" "$4"; fi
printf '%s\n' "$5" > /dev/console
systemctl poweroff
