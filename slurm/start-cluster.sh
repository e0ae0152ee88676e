#!/usr/bin/env bash
# Start a private single-node Slurm cluster on this machine, for dfqbench's real-Slurm tests (and for trying
# `dfqbench run --grid … --executor slurm` without a cluster).
#
#   slurm/start-cluster.sh [DIR]      # DIR defaults to $DFQBENCH_SLURM_DIR or /tmp/dfqbench-slurm
#   export SLURM_CONF=DIR/slurm.conf  # then sbatch/squeue/scontrol and dfqbench talk to it
#   slurm/stop-cluster.sh [DIR]
#
# Installs Debian's slurm-wlm and munge when they are missing (apt-get, needs root). Everything else lives
# under DIR: a private munge key and socket (`munged --force`), slurm.conf, state, spool, pid and log files.
# One node (this host, all its CPUs) in one partition `debug`. Runs slurmctld and slurmd as root
# (SlurmUser=root), proctrack/linuxproc and task/none (no cgroups needed), select/cons_tres with CR_CPU,
# no accounting (sacct does not work here: dfqbench never uses it). Idempotent: a running cluster in DIR is
# stopped and started again with fresh state. Prints `export SLURM_CONF=…` as its last line.
set -euo pipefail

dir="${1:-${DFQBENCH_SLURM_DIR:-/tmp/dfqbench-slurm}}"
ctld_port="${DFQBENCH_SLURMCTLD_PORT:-6817}"
slurmd_port="${DFQBENCH_SLURMD_PORT:-6818}"
max_array="${DFQBENCH_SLURM_MAX_ARRAY:-1001}"

log() { echo "start-cluster: $*" >&2; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
  [ "$(id -u)" = 0 ] || { log "slurm-wlm and munge are missing and installing them needs root"; exit 1; }
  log "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

"$(dirname "$0")/stop-cluster.sh" "$dir" >/dev/null 2>&1 || true
rm -rf "$dir"
mkdir -p "$dir"/{state,spool,log,run,munge}
dir="$(cd "$dir" && pwd)"
chmod 700 "$dir/munge"

# munge: a private key and socket; --force because it runs as root with a key outside /etc/munge.
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge/munge.key"
munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
  --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"

host="$(hostname -s)"
cpus="$(nproc)"
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))

cat >"$dir/slurm.conf" <<EOF
# Private single-node test cluster written by dfqbench's slurm/start-cluster.sh
ClusterName=dfqbench
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/slurmd-%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
MaxArraySize=$max_array
MinJobAge=300
# Slurm's default: a cancelled or requeued task has 30 s after SIGTERM to end its attempt and release its
# lease (submitit requeues a preempted job before its task has cleaned up) before SIGKILL.
KillWait=30
InactiveLimit=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"

for _ in $(seq 1 60); do
  if sinfo -h -o '%T' 2>/dev/null | grep -qx 'idle'; then
    log "cluster up in $dir: node $host, $cpus CPUs, partition debug"
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.5
done
log "the node did not come up idle within 30 s; logs: $dir/log/"
tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
exit 1
