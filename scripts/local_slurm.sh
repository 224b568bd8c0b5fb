#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, from Debian's packages, for soup-exp's
# cluster tests (tests/cluster/) and for trying the `launcher=slurm` recipes of
# docs/cluster.md before a real cluster.
#
#   scripts/local_slurm.sh start [--no-accounting]   install (apt-get) if needed, then start
#   scripts/local_slurm.sh stop                      stop every daemon it started
#   scripts/local_slurm.sh status                    sinfo, and whether accounting answers
#
# Daemons: munged, slurmctld and slurmd, plus slurmdbd over a private MariaDB reached by its
# socket only (no TCP port), unless --no-accounting. Machines here have no systemd, so the
# daemons are started directly with pid files under $SOUP_SLURM_STATE. Needs root.
# Without cgroups: proctrack/linuxproc and task/none.
set -euo pipefail

STATE=${SOUP_SLURM_STATE:-/var/tmp/soup-exp-slurm}
CONF_DIR=/etc/slurm
CLUSTER=soupexp
PARTITION=${SOUP_SLURM_PARTITION:-debug}
DB_SOCKET=$STATE/mysql/mysqld.sock
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)

say() { echo "local_slurm: $*" >&2; }

install_packages() {
  local missing=()
  for cmd in slurmctld slurmd slurmdbd munged mariadbd sbatch; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
  done
  [[ ${#missing[@]} -eq 0 ]] && return
  say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
}

short_host() {
  local host
  host=$(hostname -s)
  if ! getent hosts "$host" >/dev/null; then
    say "hostname -s ($host) does not resolve; adding it to /etc/hosts"
    echo "127.0.0.1 $host" >>/etc/hosts
  fi
  echo "$host"
}

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2
  shift 2
  for ((i = 0; i < limit * 4; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  say "$what did not come up within ${limit} s; logs: $STATE/log/"
  return 1
}

start_munge() {
  running "$STATE/munged.pid" && return
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
  runuser -u munge -- munged --pid-file="$STATE/munged.pid.tmp" 2>>"$STATE/log/munged.log" || true
  wait_for 10 munged munge -n
  pgrep -u munge -x munged | head -1 >"$STATE/munged.pid"
}

start_mariadb() {
  running "$STATE/mariadbd.pid" && return
  mkdir -p "$STATE/mysql"
  if [[ ! -d $STATE/mysql/data/mysql ]]; then
    mariadb-install-db --user=root --datadir="$STATE/mysql/data" --auth-root-authentication-method=socket \
      >>"$STATE/log/mariadb.log" 2>&1
  fi
  mariadbd --user=root --datadir="$STATE/mysql/data" --socket="$DB_SOCKET" --skip-networking \
    --pid-file="$STATE/mariadbd.pid" --log-error="$STATE/log/mariadb.log" &
  disown
  wait_for 30 MariaDB mariadb --socket="$DB_SOCKET" -e "select 1"
}

write_slurm_conf() {  # write_slurm_conf HOST ACCOUNTING(yes|no)
  local host=$1 accounting=$2 cpus mem
  cpus=$(nproc)
  mem=$(($(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 9 / 10))
  mkdir -p "$CONF_DIR" "$STATE/spool/ctld" "$STATE/spool/d"
  {
    echo "# written by soup-exp scripts/local_slurm.sh: a one-node test cluster"
    echo "ClusterName=$CLUSTER"
    echo "SlurmctldHost=$host"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "StateSaveLocation=$STATE/spool/ctld"
    echo "SlurmdSpoolDir=$STATE/spool/d"
    echo "SlurmctldPidFile=$STATE/slurmctld.pid"
    echo "SlurmdPidFile=$STATE/slurmd.pid"
    echo "SlurmctldLogFile=$STATE/log/slurmctld.log"
    echo "SlurmdLogFile=$STATE/log/slurmd.log"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_Core_Memory"
    echo "ReturnToService=2"
    echo "SchedulerType=sched/backfill"
    echo "MpiDefault=none"
    echo "JobRequeue=1"
    echo "KillWait=30"
    echo "InactiveLimit=0"
    echo "MinJobAge=300"
    echo "JobCompType=jobcomp/none"
    if [[ $accounting == yes ]]; then
      echo "AccountingStorageType=accounting_storage/slurmdbd"
      echo "AccountingStorageHost=$host"
      echo "JobAcctGatherType=jobacct_gather/linux"
    else
      echo "AccountingStorageType=accounting_storage/none"
      echo "JobAcctGatherType=jobacct_gather/none"
    fi
    echo "NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN"
    echo "PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP"
  } >"$CONF_DIR/slurm.conf"
  cat >"$CONF_DIR/slurmdbd.conf" <<EOF
# written by soup-exp scripts/local_slurm.sh
AuthType=auth/munge
DbdHost=$host
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=root
EOF
  # slurmdbd reaches MariaDB through the client library's default socket path.
  mkdir -p /run/mysqld && ln -sfn "$DB_SOCKET" /run/mysqld/mysqld.sock
  chmod 0600 "$CONF_DIR/slurmdbd.conf"
}

start_slurmdbd() {
  running "$STATE/slurmdbd.pid" && return
  slurmdbd
  wait_for 30 slurmdbd sacctmgr -n list cluster
  sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
}

start_slurm() {
  running "$STATE/slurmctld.pid" || slurmctld
  wait_for 30 slurmctld scontrol ping
  running "$STATE/slurmd.pid" || slurmd
  wait_for 30 "slurmd (node idle)" node_ready
}

node_ready() { sinfo -h -N -o %T | grep -qE '^(idle|mixed|allocated)'; }

stop_daemon() {  # stop_daemon NAME
  local pid_file=$STATE/$1.pid
  if running "$pid_file"; then
    kill "$(cat "$pid_file")"
    for _ in $(seq 40); do running "$pid_file" || break; sleep 0.25; done
  fi
  rm -f "$pid_file"
}

start() {
  local accounting=yes
  [[ ${1:-} == --no-accounting ]] && accounting=no
  [[ $(id -u) -eq 0 ]] || { say "needs root (it installs packages and starts daemons)"; exit 1; }
  install_packages
  mkdir -p "$STATE/log"
  local host
  host=$(short_host)
  # A running cluster is restarted when the accounting choice changes.
  stop_daemon slurmd
  stop_daemon slurmctld
  write_slurm_conf "$host" "$accounting"
  start_munge
  if [[ $accounting == yes ]]; then
    start_mariadb
    start_slurmdbd
  else
    stop_daemon slurmdbd
  fi
  start_slurm
  say "cluster '$CLUSTER' up on $host: partition '$PARTITION', $(nproc) CPUs, accounting $accounting; logs in $STATE/log/"
}

stop() {
  for daemon in slurmd slurmctld slurmdbd mariadbd munged; do stop_daemon "$daemon"; done
  say "stopped"
}

status() {
  sinfo
  if sacct -n -X -S now-1minute >/dev/null 2>&1; then echo "accounting: on"; else echo "accounting: off"; fi
}

case ${1:-} in
  start) shift; start "$@" ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start [--no-accounting] | stop | status" >&2; exit 2 ;;
esac
