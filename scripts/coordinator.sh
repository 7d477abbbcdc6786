# Sourced by the scripts that run a local coordinator (scripts/demo.sh,
# bench/local-cluster.sh, scripts/gpu-acceptance.sh).
#
#     start_coordinator BIN_DIR DATA_DIR LOG
#
# Starts BIN_DIR/coordinator on a free loopback port with its store in
# DATA_DIR and its log in LOG, adds its pid to the caller's `pids`, waits for
# the address it logs and exports SWEEPFOLD_COORDINATOR (the CLI's address)
# and SWEEPFOLD_DASHBOARD (the web dashboard's URL; empty with --http off).
# Returns 1, with the log's end on stderr, if no address comes within 10 s.
start_coordinator() {
    local bin_dir=$1 data_dir=$2 log=$3 addr=
    "$bin_dir/coordinator" serve --listen 127.0.0.1:0 --data-dir "$data_dir" 2>"$log" &
    pids+=($!)
    for _ in $(seq 200); do
        addr=$(sed -n 's/.*coordinator listening addr=\([^ ]*\).*/\1/p' "$log")
        [ -n "$addr" ] && break
        sleep 0.05
    done
    if [ -z "$addr" ]; then
        echo "the coordinator did not start within 10 s; its log ($log) ends with:" >&2
        tail -n 5 "$log" >&2
        return 1
    fi
    export SWEEPFOLD_COORDINATOR="http://$addr"
    local http
    http=$(sed -n 's/.*coordinator listening .* http=\([^ ]*\).*/\1/p' "$log")
    [ "$http" = none ] && http=
    export SWEEPFOLD_DASHBOARD=${http:+http://$http}
}
