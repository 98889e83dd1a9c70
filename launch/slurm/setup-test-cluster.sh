#!/usr/bin/env bash
# Set up and start a real single-node Slurm cluster on this Debian/Ubuntu machine, for tests and for trying align's
# Slurm sweeps and sbatch template on one machine.
#
#   sudo launch/slurm/setup-test-cluster.sh        # idempotent: returns at once when the cluster already works
#
# What it does (as root; no systemd needed, the daemons are started directly):
#   1. installs munge, slurmctld, slurmd and slurm-client from the distribution's packages if they are missing;
#   2. creates the munge key if missing and starts munged;
#   3. writes /etc/slurm/slurm.conf for this host: one node (CPUs = nproc, RealMemory = 90% of RAM), one default
#      partition `debug`, proctrack/linuxproc + task/none (so no cgroup.conf), requeue allowed, no accounting;
#   4. starts slurmctld and slurmd and waits (bounded) until `sinfo` shows the node idle.
# A slurm.conf that this script did not write is never overwritten.
#
# Environment: SLURM_TEST_WAIT_S (default 60) bounds the wait for the node; SLURM_TEST_PARTITION (default debug).
# Logs: /var/log/slurm/slurmctld.log, /var/log/slurm/slurmd.log, /var/log/munge/munged.log.
# Stop it: kill the daemons by their pid files (/run/slurmctld.pid, /run/slurmd.pid, /run/munge/munged.pid).
set -euo pipefail

MARKER="# Written by align launch/slurm/setup-test-cluster.sh"
CONF=/etc/slurm/slurm.conf
WAIT_S=${SLURM_TEST_WAIT_S:-60}
PARTITION=${SLURM_TEST_PARTITION:-debug}
HOST=$(hostname -s)

say() { echo "[setup-test-cluster] $*"; }
fail() {
    echo "[setup-test-cluster] error: $*" >&2
    for log in /var/log/munge/munged.log /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log; do
        [[ -f $log ]] && { echo "--- last lines of $log" >&2; tail -n 15 "$log" >&2; }
    done
    exit 1
}
node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1 | tr -d '*~#!%$@^-'; }
node_usable() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }

# The slurm.conf this script writes for this machine (the slurm user exists once the packages are installed).
render_conf() {
    local user=slurm cpus mem_mb
    id slurm >/dev/null 2>&1 || user=root
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    cat <<EOF
$MARKER: one node, one partition, no accounting.
ClusterName=align-test
SlurmctldHost=$HOST
AuthType=auth/munge
SlurmUser=$user
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: processes are tracked through /proc and tasks are not bound to CPUs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# Jobs may be requeued (scontrol requeue, or --requeue on node failure / preemption). A requeued job may start
# again cred_expire + 1 s later (Slurm's default: 121 s); 30 s keeps preemption tests short.
JobRequeue=1
AuthInfo=cred_expire=30
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Seconds between SIGTERM and SIGKILL when a job is cancelled, requeued or reaches its time limit.
KillWait=30
MinJobAge=300
NodeName=$HOST CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}
running() { local pid; pid=$(cat "$1" 2>/dev/null) && kill -0 "$pid" 2>/dev/null; }

# Fast path: a working cluster is already up (anyone's, or ours with an up-to-date slurm.conf).
if command -v sinfo >/dev/null && scontrol ping 2>/dev/null | grep -q UP && node_usable \
        && { ! grep -qF "$MARKER" "$CONF" 2>/dev/null || [[ $(cat "$CONF") == "$(render_conf)" ]]; }; then
    say "Slurm is up: node $HOST is $(node_state)."
    exit 0
fi

[[ $(id -u) -eq 0 ]] || fail "needs root to install packages and start the daemons (run it with sudo)."

# 1. Packages.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
        || ! command -v munged >/dev/null; then
    say "installing munge, slurmctld, slurmd, slurm-client"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null
    fi
fi

# 2. Munge: a key readable by munge only, and the daemon.
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! running /run/munge/munged.pid; then
    runuser -u munge -- /usr/sbin/munged || fail "munged did not start."
fi
for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
munge -n | unmunge >/dev/null 2>&1 || fail "munge cannot encode and decode a credential."

# 3. slurm.conf (ours only).
SLURM_USER=$(id slurm >/dev/null 2>&1 && echo slurm || echo root)
install -d -o "$SLURM_USER" -g "$SLURM_USER" -m 0755 /var/lib/slurm/slurmctld /var/log/slurm
install -d -m 0755 /var/lib/slurm/slurmd /etc/slurm
if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
    fail "$CONF exists and was not written by this script; not touching it. Move it away to let the script write one."
fi
NEW_CONF=$(render_conf)
CHANGED=0
if [[ ! -f $CONF ]] || [[ $(cat "$CONF") != "$NEW_CONF" ]]; then
    say "writing $CONF for node $HOST ($(grep -o 'CPUs=[0-9]* RealMemory=[0-9]*' <<<"$NEW_CONF"), partition $PARTITION)"
    printf '%s\n' "$NEW_CONF" > "$CONF"
    CHANGED=1
fi

# 4. Daemons: restart them when the configuration changed, start the ones not running.
if [[ $CHANGED -eq 1 ]]; then
    for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
        if running "$pidfile"; then
            kill "$(cat "$pidfile")"
            for _ in $(seq 50); do running "$pidfile" || break; sleep 0.2; done
        fi
    done
fi
if ! running /run/slurmctld.pid; then
    say "starting slurmctld"
    /usr/sbin/slurmctld || fail "slurmctld did not start."
fi
if ! running /run/slurmd.pid; then
    say "starting slurmd"
    /usr/sbin/slurmd || fail "slurmd did not start."
fi

deadline=$((SECONDS + WAIT_S))
resumed=0
until node_usable; do
    state=$(node_state || true)
    if [[ $resumed -eq 0 && $state =~ ^(down|drained|draining|drain|fail)$ ]]; then
        scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
        resumed=1
    fi
    ((SECONDS < deadline)) || fail "node $HOST is not idle after ${WAIT_S}s (state: '${state:-unknown}')."
    sleep 1
done
say "Slurm is up: node $HOST is $(node_state) (CPUs=$(nproc), partition $PARTITION)."
