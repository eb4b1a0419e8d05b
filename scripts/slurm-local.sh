#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the launcher's tests and for trying launch/slurm.py
# without a cluster: munged, slurmctld and slurmd on localhost, all state, logs and the config in
# one folder ($ACI_SLURM_DIR, default /tmp/aci-slurm); no accounting database; /etc is not touched.
#
#   bash scripts/slurm-local.sh install   # apt-get install slurm-wlm munge (root, Debian/Ubuntu)
#   bash scripts/slurm-local.sh start     # idempotent; prints the line to export SLURM_CONF
#   bash scripts/slurm-local.sh status
#   bash scripts/slurm-local.sh stop      # stops the daemons and removes the folder
#
# Then: export SLURM_CONF=$ACI_SLURM_DIR/slurm.conf; sbatch/squeue/scontrol talk to this cluster.
# Needs root (slurmd launches jobs as their users). One partition `debug` with this machine's CPUs
# and memory; several jobs share the node (select/cons_tres, CR_Core_Memory).
set -euo pipefail
D=${ACI_SLURM_DIR:-/tmp/aci-slurm}
CONF=$D/slurm.conf
PORT=${ACI_SLURM_PORT:-6917}  # slurmctld; slurmd listens on PORT+1 (away from a real Slurm's 6817/6818)

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then return; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
  cat > "$CONF" <<EOF
# written by scripts/slurm-local.sh
ClusterName=acilocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$D/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  pid_alive "$D/munge/munged.pid" && return
  mkdir -p "$D/munge"
  chmod 700 "$D/munge"
  [ -f "$D/munge/munge.key" ] || dd if=/dev/urandom of="$D/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$D/munge/munge.key"
  munged --force --socket="$D/munge/munge.socket" --key-file="$D/munge/munge.key" \
    --pid-file="$D/munge/munged.pid" --log-file="$D/munge/munged.log" --seed-file="$D/munge/munged.seed"
}

start() {
  command -v slurmctld >/dev/null || { echo "slurm-local: slurmctld not found; run: bash $0 install" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "slurm-local: needs root (slurmd launches the jobs)" >&2; exit 1; }
  mkdir -p "$D/state" "$D/spool"
  if pid_alive "$D/slurmctld.pid" && pid_alive "$D/slurmd.pid"; then
    echo "export SLURM_CONF=$CONF"
    return
  fi
  write_conf
  start_munge
  export SLURM_CONF=$CONF
  pid_alive "$D/slurmctld.pid" || slurmctld -c -i -f "$CONF"  # -c: no old state; -i: ignore errors in it
  pid_alive "$D/slurmd.pid" || slurmd -f "$CONF"
  for _ in $(seq 60); do  # the node is idle once slurmd registered
    if sinfo -h -o '%t' 2>/dev/null | grep -qx 'idle\|mix\|alloc'; then
      echo "export SLURM_CONF=$CONF"
      return
    fi
    sleep 0.5
  done
  echo "slurm-local: the node did not come up; logs in $D (slurmctld.log, slurmd.log)" >&2
  exit 1
}

stop() {
  local pid
  for p in slurmd slurmctld munge/munged; do
    pid=$(cat "$D/$p.pid" 2>/dev/null || true)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || continue
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  done
  rm -rf "$D"
}

status() {
  export SLURM_CONF=$CONF
  if pid_alive "$D/slurmctld.pid"; then sinfo; squeue; else echo "slurm-local: not running ($D)"; exit 1; fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
