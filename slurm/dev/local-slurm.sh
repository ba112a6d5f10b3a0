#!/usr/bin/env bash
# Start (or stop) a real single-node Slurm on this machine, for testing the batch scripts.
#
#   sudo apt-get install -y slurm-wlm munge  # once (Debian/Ubuntu; about 20 s)
#   sudo slurm/dev/local-slurm.sh start      # munged, slurmctld, slurmd; logs in /tmp/hpcml-slurm/log
#   export SLURM_CONF=/tmp/hpcml-slurm/slurm.conf
#   sbatch slurm/train.sbatch                # or: sbatch -N 1 -n 2 slurm/allreduce-bench.sbatch
#   sudo slurm/dev/local-slurm.sh stop
#
# Follows the facts measured on the project's machines (shared/notes/slurm-and-multihost.md):
# no systemd, so munged, slurmctld and slurmd are started by hand and stopped by PID.
set -euo pipefail
DIR=${HPCML_SLURM_DIR:-/tmp/hpcml-slurm}
cmd=${1:-start}

if [ "$cmd" = stop ]; then
  # the daemons run in the foreground (-D/-F) from this script: the PIDs it recorded
  pids=""
  for f in slurmd.pid.launcher slurmctld.pid.launcher munged.pid; do
    if [ -f "$DIR/$f" ]; then pids="$pids $(cat "$DIR/$f")"; rm -f "$DIR/$f"; fi
  done
  for p in $pids; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 40); do  # until they are gone (a restart would find the ports taken)
    alive=""
    for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ -z "$alive" ] && break
    sleep 0.25
  done
  exit 0
fi

mkdir -p "$DIR"/{state,spool,log}
cpus=$(nproc)
mem=$(( $(free -m | awk '/^Mem:/ {print $7}') * 9 / 10 ))
cat > "$DIR/slurm.conf" <<CONF
ClusterName=hpcml
SlurmctldHost=localhost
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerParameters=sched_interval=2,bf_interval=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=localhost CPUs=$cpus RealMemory=$mem
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$DIR/slurm.conf"
mkdir -p /run/munge && chown munge:munge /run/munge
# the daemons log to files under $DIR/log (not to this terminal)
setpriv --reuid=munge --regid=munge --init-groups munged -F > "$DIR/log/munged.out" 2>&1 &
echo $! > "$DIR/munged.pid"
sleep 1
slurmctld -D -i -f "$SLURM_CONF" > "$DIR/log/slurmctld.out" 2>&1 &
echo $! > "$DIR/slurmctld.pid.launcher"
slurmd -D -N localhost -f "$SLURM_CONF" > "$DIR/log/slurmd.out" 2>&1 &
echo $! > "$DIR/slurmd.pid.launcher"
for _ in $(seq 30); do
  sinfo -h -o %T 2>/dev/null | grep -q idle && { echo "slurm up: export SLURM_CONF=$SLURM_CONF"; exit 0; }
  sleep 1
done
echo "slurm did not come up; see $DIR/log" >&2
exit 1
