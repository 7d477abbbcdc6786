#!/usr/bin/env bash
# A one-node Slurm cluster in a directory, for tests and for trying the
# Slurm executor on a laptop: munged, slurmctld and slurmd as root, CPU only,
# no cgroups, no accounting database. Debian packages: slurm-wlm munge.
#
#   scripts/slurm-one-node.sh start DIR   # writes DIR/slurm.conf, starts the daemons,
#                                         # waits until the node is idle; prints
#                                         # `export SLURM_CONF=DIR/slurm.conf`
#   scripts/slurm-one-node.sh stop DIR    # stops them (and every job)
#
# Exit status 2 means Slurm or munge is not installed (callers skip, saying so).
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [[ -z "$cmd" || -z "$dir" ]]; then
    echo "usage: $0 start|stop DIR" >&2
    exit 64
fi

for bin in slurmctld slurmd munged sbatch squeue scancel sinfo; do
    if ! command -v "$bin" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/$bin" ]]; then
        echo "slurm-one-node: $bin is not installed (apt-get install slurm-wlm munge)" >&2
        exit 2
    fi
done
export PATH="$PATH:/usr/sbin"

stop() {
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munged.pid"; do
        if [[ -f "$pidfile" ]]; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
        fi
    done
    # Job steps started by this slurmd.
    pkill -f "slurmstepd.*" 2>/dev/null || true
    sleep 1
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munged.pid"; do
        if [[ -f "$pidfile" ]]; then
            kill -9 "$(cat "$pidfile")" 2>/dev/null || true
            rm -f "$pidfile"
        fi
    done
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

case "$cmd" in
stop)
    stop
    exit 0
    ;;
start) ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 64
    ;;
esac

if [[ $(id -u) -ne 0 ]]; then
    echo "slurm-one-node: run as root (slurmd starts jobs as their users)" >&2
    exit 2
fi

mkdir -p "$dir"/{state,spool,munge}
dir=$(cd "$dir" && pwd)
host=$(hostname -s)
cpus=$(nproc)
mem=$(awk '/MemTotal/ {print int($2/1024) - 512}' /proc/meminfo)
ctld_port=$(free_port)
slurmd_port=$(free_port)

# munge: its own socket in DIR, the key Debian's package made.
key=/etc/munge/munge.key
if [[ ! -f "$key" ]]; then
    echo "slurm-one-node: $key is missing (reinstall munge, or run mungekey)" >&2
    exit 2
fi
chown munge:munge "$dir/munge"
chmod 700 "$dir/munge"
sock="$dir/munge/munge.socket"
runuser -u munge -- munged --socket="$sock" --pid-file="$dir/munge/munged.pid" \
    --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed" --force
cp "$dir/munge/munged.pid" "$dir/munged.pid"

cat >"$dir/slurm.conf" <<EOF
ClusterName=sweepfold
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
KillWait=5
MinJobAge=10
InactiveLimit=0
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
export SLURM_CONF="$dir/slurm.conf"

slurmctld -f "$SLURM_CONF" -i
slurmd -f "$SLURM_CONF"

# Ready when the node is idle.
for _ in $(seq 1 60); do
    state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)
    if [[ "$state" == "idle" ]]; then
        echo "export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.5
done
echo "slurm-one-node: the node did not become idle (state: ${state:-none}); logs in $dir" >&2
tail -20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
stop
exit 1
