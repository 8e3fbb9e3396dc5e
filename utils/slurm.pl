#!/usr/bin/env bash
# Slurm job runner with the Kaldi run.pl / slurm.pl interface (written in bash).
#
#   slurm.pl [options] [JOB=1:N] <log-file> <command> [args...]
#
# Submits one Slurm array job (sbatch --array=first-last[%max] --wait), one
# task per job index, with JOB replaced in the log name and the command as in
# run.pl, waits for all of them and exits 0 only if every task succeeded.
# Each task's exit status is written next to its log (<log>.rc), so a failure
# is reported with its log file even when Slurm's accounting is unavailable.
#
# Options:
#   --mem 4G  --num-threads N (cpus-per-task)  --gpu N  --time 1-00:00:00
#   --partition P  --account A  --qos Q  --max-jobs-run N  --config FILE (ignored)
#   Extra sbatch arguments: SLURM_EXTRA_ARGS="--constraint=..." in the environment.
set -u

mem=""; threads=1; gpu=0; time_limit=""; partition=""; account=""; qos=""; max_jobs=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --mem) mem=$2; shift 2 ;;
    --num-threads|--num_threads) threads=$2; shift 2 ;;
    --gpu) gpu=$2; shift 2 ;;
    --time) time_limit=$2; shift 2 ;;
    --partition) partition=$2; shift 2 ;;
    --account) account=$2; shift 2 ;;
    --qos) qos=$2; shift 2 ;;
    --max-jobs-run|--max_jobs_run) max_jobs=$2; shift 2 ;;
    --config) shift 2 ;;
    --*=*) shift ;;
    *) break ;;
  esac
done
if [[ $# -lt 2 ]]; then
  echo "usage: slurm.pl [options] [JOB=1:N] <log-file> <command> [args...]" >&2; exit 1
fi
command -v sbatch >/dev/null || { echo "slurm.pl: sbatch not found (is this a Slurm cluster? use utils/run.pl locally)" >&2; exit 1; }

jobvar=""; first=1; last=1
if [[ "$1" =~ ^([A-Za-z_][A-Za-z0-9_]*)=([0-9]+):([0-9]+)$ ]]; then
  jobvar=${BASH_REMATCH[1]}; first=${BASH_REMATCH[2]}; last=${BASH_REMATCH[3]}; shift
elif [[ "$1" =~ ^[A-Za-z_][A-Za-z0-9_]*=[0-9]+$ ]]; then
  jobvar=${1%%=*}; first=${1#*=}; last=$first; shift
fi
logfile=$1; shift

cmd=""
for a in "$@"; do
  if [[ "$a" =~ ^[^[:space:]\'\"]+$ ]]; then cmd+="$a "; else cmd+="$(printf '%q' "$a") "; fi
done

logdir=$(dirname "$logfile")
mkdir -p "$logdir/q"
base=$(basename "$logfile"); base=${base//$jobvar/all}
script="$logdir/q/${base%.log}.sh"

# The task script: substitute the array index for JOB, run, log, record status.
{
  echo '#!/usr/bin/env bash'
  echo "cd $(printf '%q' "$PWD")"
  echo "J=\${SLURM_ARRAY_TASK_ID:-$first}"
  if [[ -n "$jobvar" ]]; then
    echo "log=$(printf '%q' "$logfile"); log=\${log//$jobvar/\$J}"
    echo "c=$(printf '%q' "$cmd"); c=\${c//$jobvar/\$J}"
  else
    echo "log=$(printf '%q' "$logfile")"
    echo "c=$(printf '%q' "$cmd")"
  fi
  echo 'mkdir -p "$(dirname "$log")"; rm -f "$log.rc"'
  echo 'start=$(date +%s)'
  echo '{ echo "# $c"; echo "# Started at $(date) on $(hostname) (slurm job ${SLURM_JOB_ID:-?})"; echo "#"; } > "$log"'
  echo '( bash -c "$c" ) >> "$log" 2>&1; rc=$?'
  echo '{ echo "# Accounting: time=$(( $(date +%s) - start )) threads='"$threads"'"; echo "# Ended (code $rc) at $(date)"; } >> "$log"'
  echo 'echo $rc > "$log.rc"'
  echo 'exit $rc'
} > "$script"
chmod +x "$script"

array="$first-$last"; (( max_jobs > 0 )) && array+="%$max_jobs"
opts=(--array="$array" --wait --job-name="$(basename "${script%.sh}")" --cpus-per-task="$threads"
      --output=/dev/null --error="$logdir/q/slurm-%A_%a.err")
[[ -n "$mem" ]] && opts+=(--mem="$mem")
(( gpu > 0 )) && opts+=(--gres="gpu:$gpu")
[[ -n "$time_limit" ]] && opts+=(--time="$time_limit")
[[ -n "$partition" ]] && opts+=(--partition="$partition")
[[ -n "$account" ]] && opts+=(--account="$account")
[[ -n "$qos" ]] && opts+=(--qos="$qos")
# shellcheck disable=SC2086
sbatch "${opts[@]}" ${SLURM_EXTRA_ARGS:-} "$script" > "$logdir/q/${base%.log}.sbatch.out" 2>&1
sb=$?

failed=()
for (( j = first; j <= last; j++ )); do
  log=$logfile; [[ -n "$jobvar" ]] && log=${log//$jobvar/$j}
  rc=$(cat "$log.rc" 2>/dev/null || echo missing)
  [[ "$rc" == 0 ]] || failed+=("$j:$log ($rc)")
done
if (( ${#failed[@]} > 0 )); then
  echo "slurm.pl: ${#failed[@]} / $(( last - first + 1 )) failed (sbatch exit $sb); first: ${failed[0]}" >&2
  echo "slurm.pl: submission output in $logdir/q/${base%.log}.sbatch.out" >&2
  exit 1
fi
exit 0
