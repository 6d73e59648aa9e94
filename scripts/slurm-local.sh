#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the cluster tests and CI
# (Debian 12's slurm-wlm 22.05 and munge; docs: /work/shared/reference or the
# README's "On a cluster"). As root, or through sudo when there is one.
#
#   bash scripts/slurm-local.sh start    install (once), configure, start; waits until the node is idle
#   bash scripts/slurm-local.sh status   exit 0 when the cluster answers and its node takes jobs
#   bash scripts/slurm-local.sh stop     stop the daemons this script started (by their pid files)
#
# Idempotent: start on a running cluster and stop on a stopped one do nothing.
# A slurm.conf this script did not write (a real cluster's) is never changed:
# start then only checks that that cluster answers.
set -euo pipefail
cd "$(dirname "$0")/.."

MARKER='# Written by cellfinder-retrain scripts/slurm-local.sh'
CONF=/etc/slurm/slurm.conf
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGED_PID=/run/munge/munged.pid
HOST=$(hostname)

if [ "$(id -u)" -ne 0 ] && [ "${1:-}" != status ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then exec sudo -n bash "$0" "$@"; fi
  echo "slurm-local.sh $1 needs root (it installs and starts system daemons): run it as root, or with sudo" >&2
  exit 1
fi

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# The node's state as sinfo gives it (idle, mixed, allocated, down, drained, idle* when not responding...), empty when the controller does not answer.
node_state() { sinfo -h -n "$HOST" -o '%T' 2>/dev/null | head -1 || true; }

status() {
  command -v sinfo >/dev/null || return 1
  case "$(node_state)" in idle | mixed | allocated | completing) return 0 ;; *) return 1 ;; esac
}

write_config() {
  # slurmd refuses a node whose memory is below RealMemory: 90% of what the machine has leaves room.
  local memory
  memory=$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
  local wanted
  wanted=$(cat <<EOF
$MARKER
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
NodeName=$HOST CPUs=$(nproc) RealMemory=$memory State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
)
  mkdir -p /etc/slurm
  [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$wanted" ] || printf '%s\n' "$wanted" >"$CONF"
  # CgroupPlugin=disabled makes slurmd refuse to start ("cannot create cgroup context for disabled").
  printf 'CgroupPlugin=cgroup/v1\nIgnoreSystemd=yes\n' >/etc/slurm/cgroup.conf
}

start() {
  bash scripts/apt-packages.sh slurm-wlm munge
  if [ -f "$CONF" ] && ! grep -qxF "$MARKER" "$CONF"; then
    # A real cluster's configuration: used as it is.
    if status; then echo "SLURM: using this machine's own cluster ($CONF)"; exit 0; fi
    echo "SLURM: $CONF is this machine's own (not written by slurm-local.sh) and its node $HOST does not take jobs (sinfo: '$(node_state)'); start its daemons, or move $CONF away to let this script set up a test cluster" >&2
    exit 1
  fi
  if alive "$CTLD_PID" && alive "$SLURMD_PID" && status; then echo "SLURM: already running"; exit 0; fi
  write_config
  mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/log/munge /var/lib/munge
  [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; chmod 400 /etc/munge/munge.key; }
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  alive "$MUNGED_PID" || runuser -u munge -- /usr/sbin/munged
  alive "$CTLD_PID" || /usr/sbin/slurmctld
  alive "$SLURMD_PID" || /usr/sbin/slurmd
  for _ in $(seq 60); do
    if status; then echo "SLURM: running (node $HOST, partition cpu)"; exit 0; fi
    # A node left down or drained by an earlier run (killed daemons) is put back to work.
    case "$(node_state)" in down* | drain*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;; esac
    sleep 1
  done
  echo "SLURM: the node did not become idle within 60 s (sinfo: '$(node_state)'); see /var/log/slurm/slurmctld.log and slurmd.log" >&2
  exit 1
}

stop() {
  if [ -f "$CONF" ] && ! grep -qxF "$MARKER" "$CONF"; then echo "SLURM: $CONF is this machine's own: not stopping it" >&2; exit 1; fi
  # Stops slurmctld and every slurmd; then their pid files are gone or name dead processes.
  if alive "$CTLD_PID"; then scontrol shutdown >/dev/null 2>&1 || true; fi
  for pid_file in "$CTLD_PID" "$SLURMD_PID" "$MUNGED_PID"; do
    if alive "$pid_file"; then
      pid=$(cat "$pid_file")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
  done
  echo "SLURM: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: bash scripts/slurm-local.sh start|status|stop" >&2; exit 2 ;;
esac
