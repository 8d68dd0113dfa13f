# Sourced by the benchmarks that run against do-sim and a loopback s3s-fs. Needs $ROOT,
# $work (the run's temp dir) and the array `pids` (what the caller's cleanup kills).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_s3 KEY SECRET: s3s-fs (built once by .ci/setup-s3.sh) on a free loopback port over
# $work/s3 with the bucket `bench`; sets S3_PORT. The keys are throwaway values.
start_s3() {
    local s3s_fs
    s3s_fs=$("$ROOT/.ci/setup-s3.sh" | tail -n1)
    S3_PORT=$(free_port)
    mkdir -p "$work/s3/bench"
    "$s3s_fs" --host 127.0.0.1 --port "$S3_PORT" --access-key "$1" --secret-key "$2" "$work/s3" \
        >/dev/null 2>"$work/s3.log" &
    pids+=($!)
}

# start_sim SIM: the do-sim binary SIM with $work/sim.json on a free loopback port; sets
# API once it listens, and waits for the S3 server of start_s3 too.
start_sim() {
    "$1" --listen 127.0.0.1:0 --config "$work/sim.json" > "$work/sim.out" 2>"$work/sim.log" &
    pids+=($!)
    for _ in $(seq 200); do [[ -s "$work/sim.out" ]] && break; sleep 0.05; done
    API=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api_url"])' "$work/sim.out")
    for _ in $(seq 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $S3_PORT), 1)" 2>/dev/null && break
        sleep 0.05
    done
}
