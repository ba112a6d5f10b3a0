#!/usr/bin/env bash
# Start (or stop) a real single-node Slurm on this machine, for testing the batch scripts.
#
#   sudo slurm/dev/local-slurm.sh start     # needs: apt-get install -y slurm-wlm munge
#   export SLURM_CONF=/tmp/hpcml-slurm/slurm.conf
#   sbatch -N 1 -n 2 slurm/allreduce-bench.sbatch
#   sudo slurm/dev/local-slurm.sh stop
#
# Follows the facts measured on the project's machines (shared/notes/slurm-and-multihost.md):
# no systemd, so munged, slurmctld and slurmd are started by hand and stopped by PID.
set -euo pipefail
DIR=${HPCML_SLURM_DIR:-/tmp/hpcml-slurm}
cmd=${1:-start}

if [ "$cmd" = stop ]; then
  for p in slurmd slurmctld munged; do
    [ -f "$DIR/$p.pid" ] && kill "$(cat "$DIR/$p.pid")" 2>/dev/null || true
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
setpriv --reuid=munge --regid=munge --init-groups munged -F & echo $! > "$DIR/munged.pid"
sleep 1
slurmctld -D -i -f "$SLURM_CONF" & echo $! > "$DIR/slurmctld.pid.launcher"
slurmd -D -N localhost -f "$SLURM_CONF" & echo $! > "$DIR/slurmd.pid.launcher"
for _ in $(seq 30); do
  sinfo -h -o %T 2>/dev/null | grep -q idle && { echo "slurm up: export SLURM_CONF=$SLURM_CONF"; exit 0; }
  sleep 1
done
echo "slurm did not come up; see $DIR/log" >&2
exit 1
