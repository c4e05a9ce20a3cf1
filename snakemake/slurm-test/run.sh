#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, and the CI cohort run through the SLURM profile.
#
#   snakemake/slurm-test/run.sh            (as root; called by .ci/run)
#
# Installs Debian's slurm-wlm and munge when missing, writes /etc/slurm/slurm.conf (+ gres.conf)
# sized from snakemake/profiles/slurm (its partition names, its largest requests), starts munged,
# slurmctld and slurmd (pid files in $WSI_LPD_SLURM_SCRATCH, default /tmp/wsi-lpd-slurm-test),
# runs configs/ci.yaml once locally and once through `--workflow-profile snakemake/profiles/slurm`,
# then checks (cluster.py check) that every output exists, the GeoJSON features are equal, and
# the job-completion log holds one completed job per rule with the profile's partition, memory,
# time limit, CPUs and GPUs. The daemons it started are stopped by pid on every exit.
#
# Exit 0: passed, or SLURM could not be installed (apt-get missing or failing: the reason is
# printed). Exit 1: anything else that went wrong, including a foreign SLURM setup on this machine
# (set WSI_LPD_SKIP_SLURM_TEST=1 to skip the test there).
# The Python environment: $WSI_LPD_VENV, else the venv .ci/run builds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
scratch="${WSI_LPD_SLURM_SCRATCH:-/tmp/wsi-lpd-slurm-test}"
profile="$repo/snakemake/profiles/slurm"
say() { echo "slurm-test: $*"; }
start=$(date +%s)

if [ "${WSI_LPD_SKIP_SLURM_TEST:-0}" = 1 ]; then
    say "skipped (WSI_LPD_SKIP_SLURM_TEST=1)"
    exit 0
fi

if [ -z "${WSI_LPD_VENV:-}" ]; then
    hash=$(cat "$repo/requirements.lock" "$repo/requirements-nodeps.txt" | sha256sum | cut -c1-16)
    WSI_LPD_VENV="${WSI_LPD_VENV_ROOT:-$HOME/.cache/wsi-lpd}/ci-venv-$hash"
fi
if [ ! -x "$WSI_LPD_VENV/bin/snakemake" ] || [ ! -x "$WSI_LPD_VENV/bin/wsi-lpd" ]; then
    say "FAIL: no snakemake/wsi-lpd in $WSI_LPD_VENV (run .ci/run or set WSI_LPD_VENV)"
    exit 1
fi
export PATH="$WSI_LPD_VENV/bin:$PATH"
py="$WSI_LPD_VENV/bin/python"

# --- install --------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    if ! command -v apt-get >/dev/null; then
        say "skipped: slurm-wlm/munge are not installed and there is no apt-get to install them"
        exit 0
    fi
    if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq slurm-wlm munge >/dev/null); then
        say "skipped: 'apt-get install slurm-wlm munge' failed (not root, or no package mirror)"
        exit 0
    fi
fi
if [ -e /etc/slurm/slurm.conf ] && ! grep -q "written by wsi-lpd" /etc/slurm/slurm.conf; then
    say "FAIL: /etc/slurm/slurm.conf belongs to another SLURM setup; not touching it" \
        "(WSI_LPD_SKIP_SLURM_TEST=1 skips this test)"
    exit 1
fi
for pidfile in "$scratch"/slurmctld.pid "$scratch"/slurmd.pid; do
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        say "FAIL: a daemon of an earlier test still runs (pid $(cat "$pidfile"), $pidfile)"
        exit 1
    fi
done

# --- configure ------------------------------------------------------------------------------
rm -rf "$scratch"
mkdir -p "$scratch"/state "$scratch"/spool "$scratch"/munge "$scratch"/local "$scratch"/slurm
mkdir -p /etc/slurm
"$py" "$here/cluster.py" conf "$profile" "$scratch" >/etc/slurm/slurm.conf
cp "$scratch/gres.conf" /etc/slurm/gres.conf

started=()   # pid files of the daemons this script started
runs=()      # the two snakemake runs, in background subshells (a signal interrupts `wait`)
stop_all() {
    local rc=$?
    set +e
    for run in local slurm; do   # `timeout` passes the signal on to its snakemake
        [ -f "$scratch/$run.pid" ] || continue
        pid=$(cat "$scratch/$run.pid")
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    done
    if [ -n "${started[*]:-}" ] && command -v scancel >/dev/null; then
        scancel --quiet --user "$(id -un)" 2>/dev/null
    fi
    for ((i = ${#started[@]} - 1; i >= 0; i--)); do
        pidfile="${started[$i]}"
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
    done
    say "wall time $(($(date +%s) - start)) s; exit $rc"
    exit "$rc"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# munge: reuse a running munged, else start one as user munge
if ! (munge -n | unmunge) >/dev/null 2>&1; then
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key "$scratch/munge"
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    runuser -u munge -- munged --pid-file="$scratch/munge/munged.pid" \
        --log-file="$scratch/munge/munged.log"
    started+=("$scratch/munge/munged.pid")
    (munge -n | unmunge) >/dev/null || { say "FAIL: munge does not authenticate"; exit 1; }
fi
slurmctld -c
started+=("$scratch/slurmctld.pid")
slurmd
started+=("$scratch/slurmd.pid")
for _ in $(seq 60); do
    state=$( (sinfo -h -N -o %t 2>/dev/null || true) | head -1)
    [ "$state" = idle ] && break
    sleep 1
done
if [ "$state" != idle ]; then
    say "FAIL: the node is not idle after 60 s (sinfo: ${state:-no answer}); logs in $scratch"
    tail -n 5 "$scratch"/slurmctld.log "$scratch"/slurmd.log
    exit 1
fi
say "cluster up after $(($(date +%s) - start)) s: $(sinfo -h -o '%P %D %c %m %G %t' | tr '\n' ';')"

# --- run ------------------------------------------------------------------------------------
# The local run (same thread counts as the SLURM jobs) goes alongside the SLURM run, which mostly
# waits on the scheduler.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
common=(--snakefile "$repo/Snakefile" --configfile "$repo/configs/ci.yaml")
read -r -a local_threads <<<"$("$py" "$here/cluster.py" threads "$profile")"
t0=$(date +%s)
(
    rc=0
    timeout 420 snakemake "${common[@]}" --directory "$scratch/local" \
        --workflow-profile "$repo/snakemake/profiles/local" "${local_threads[@]}" \
        >"$scratch/local.log" 2>&1 &
    echo $! >"$scratch/local.pid"
    wait $! || rc=$?
    echo "$rc $(($(date +%s) - t0))" >"$scratch/local.rc"
) &
runs+=($!)
# The status checks start after 2 s instead of the plugin's 40 s (the CI jobs are short); the
# plugin's own logs of successful jobs are kept, they map SLURM job ids to rules for the check.
(
    rc=0
    timeout 480 snakemake "${common[@]}" --directory "$scratch/slurm" \
        --workflow-profile "$profile" --slurm-init-seconds-before-status-checks 2 \
        --slurm-keep-successful-logs >"$scratch/slurm.log" 2>&1 &
    echo $! >"$scratch/slurm.pid"
    wait $! || rc=$?
    echo "$rc $(($(date +%s) - t0))" >"$scratch/slurm.rc"
) &
runs+=($!)
wait "${runs[@]}"
read -r local_rc local_s <"$scratch/local.rc"
read -r slurm_rc slurm_s <"$scratch/slurm.rc"
if [ "$local_rc" != 0 ]; then
    tail -n 30 "$scratch/local.log"
    say "FAIL: the local run failed, exit $local_rc ($scratch/local.log)"
    exit 1
fi
if [ "$slurm_rc" != 0 ]; then
    tail -n 30 "$scratch/slurm.log"
    say "FAIL: the SLURM run failed, exit $slurm_rc ($scratch/slurm.log; SLURM logs in $scratch)"
    exit 1
fi
scontrol show job -o >"$scratch/jobs.txt"   # finished jobs stay listed for MinJobAge=600 s
say "local run $local_s s, SLURM run $slurm_s s (concurrently)"
"$py" "$here/cluster.py" check "$profile" "$scratch" "$scratch/local" "$scratch/slurm"
