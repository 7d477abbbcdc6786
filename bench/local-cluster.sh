# Sourced by the benchmarks: builds the coordinator and the agent, copies
# them into a temporary directory (so that a rebuild during a long run does
# not swap the binaries under it), starts a coordinator on a data dir there
# and one CPU agent for a dataset, and stops both (and removes the
# directory) when the script exits.
#
#     source bench/local-cluster.sh
#     start_local_cluster mnist-sketch "$data_dir" [MORE AGENT FLAGS...]
#
# Afterwards: $bin (the binaries), $work (the temporary directory) and
# SWEEPFOLD_COORDINATOR (the CLI's address) are set.

start_local_cluster() {
    local dataset=$1 data_dir=$2
    shift 2
    cargo build --quiet -p coordinator -p agent
    work=$(mktemp -d)
    bin=$work/bin
    mkdir -p "$bin"
    cp target/debug/coordinator target/debug/agent "$bin/"
    pids=()
    trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
    source scripts/coordinator.sh
    start_coordinator "$bin" "$work/data" "$work/coordinator.log" || exit 1
    "$bin/agent" run --coordinator "$SWEEPFOLD_COORDINATOR" --name a --work-dir "$work/agent" --cpu \
        --dataset "$dataset=$data_dir" "$@" 2>"$work/agent.log" &
    pids+=($!)
    until grep -q "registered with the coordinator" "$work/agent.log"; do sleep 0.2; done
}
