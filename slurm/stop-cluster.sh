#!/usr/bin/env bash
# Stop the private cluster started by slurm/start-cluster.sh in DIR (its daemons only, by their pid files).
set -uo pipefail
dir="${1:-${DFQBENCH_SLURM_DIR:-/tmp/dfqbench-slurm}}"
[ -d "$dir" ] || exit 0
for pidfile in "$dir"/run/slurmd-*.pid "$dir"/run/slurmctld.pid "$dir"/munge/munged.pid; do
  [ -f "$pidfile" ] || continue
  pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
done
exit 0
