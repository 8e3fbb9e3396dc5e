#!/usr/bin/env bash
# Local job runner with the Kaldi run.pl interface (written in bash).
#
#   run.pl [options] [JOB=1:N] <log-file> <command> [args...]
#
# With JOB=a:b the command runs once per job index; every argument (and the
# log file name) has the word JOB replaced by the index.  Each job's stdout
# and stderr go to its log file, which starts with the command and ends with
# "# Ended (code N)" and an accounting line, as Kaldi's logs do.  Exit status:
# 0 if every job succeeded, 1 otherwise (with a summary on stderr naming the
# failed logs).
#
# Options (Kaldi names; the resource ones are accepted and ignored locally):
#   --max-jobs-run N   run at most N jobs at once (default: all; on a small
#                      machine pass 1 so jobs do not fight over the cores)
#   --num-threads N, --mem X, --gpu N, --time T, --config FILE   ignored
set -u

max_jobs=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --max-jobs-run|--max_jobs_run) max_jobs=$2; shift 2 ;;
    --num-threads|--num_threads|--mem|--gpu|--time|--config|--partition|--account|--qos) shift 2 ;;
    --*=*) shift ;;
    *) break ;;
  esac
done

if [[ $# -lt 2 ]]; then
  echo "usage: run.pl [--max-jobs-run N] [JOB=1:N] <log-file> <command> [args...]" >&2
  exit 1
fi

jobvar=""; first=1; last=1
if [[ "$1" =~ ^([A-Za-z_][A-Za-z0-9_]*)=([0-9]+):([0-9]+)$ ]]; then
  jobvar=${BASH_REMATCH[1]}; first=${BASH_REMATCH[2]}; last=${BASH_REMATCH[3]}
  shift
  if (( first > last )); then
    echo "run.pl: bad job range $first:$last" >&2; exit 1
  fi
elif [[ "$1" =~ ^[A-Za-z_][A-Za-z0-9_]*=[0-9]+$ ]]; then
  jobvar=${1%%=*}; first=${1#*=}; last=$first
  shift
fi
logfile=$1; shift
if [[ $# -lt 1 ]]; then
  echo "run.pl: no command given" >&2; exit 1
fi
if [[ -n "$jobvar" && "$logfile" != *"$jobvar"* && $first -ne $last ]]; then
  echo "run.pl: the log file name $logfile does not contain $jobvar; jobs would overwrite each other's logs" >&2
  exit 1
fi

# One command line: words without blanks or quotes pass as they are (so a
# lone "|" still pipes), others are quoted for the shell.
cmd=""
for a in "$@"; do
  if [[ "$a" =~ ^[^[:space:]\'\"]+$ ]]; then cmd+="$a "; else cmd+="$(printf '%q' "$a") "; fi
done

subst() {  # replace the job variable as a whole word-ish token, as Kaldi does
  local s=$1 j=$2
  if [[ -n "$jobvar" ]]; then s=${s//$jobvar/$j}; fi
  printf '%s' "$s"
}

run_one() {
  local j=$1 log c start rc
  log=$(subst "$logfile" "$j")
  c=$(subst "$cmd" "$j")
  mkdir -p "$(dirname "$log")"
  start=$(date +%s)
  {
    echo "# $c"
    echo "# Started at $(date)"
    echo "#"
  } > "$log"
  ( bash -c "$c" ) >> "$log" 2>&1
  rc=$?
  {
    echo "# Accounting: time=$(( $(date +%s) - start )) threads=1"
    echo "# Ended (code $rc) at $(date)"
  } >> "$log"
  return $rc
}

declare -A pid_of=()
failed=()
running=0
wait_one() {
  local p j
  # wait for any job, then find which ones have finished
  wait -n 2>/dev/null || true
  for j in "${!pid_of[@]}"; do
    p=${pid_of[$j]}
    if ! kill -0 "$p" 2>/dev/null; then
      wait "$p"; local rc=$?
      (( rc != 0 )) && failed+=("$j")
      unset "pid_of[$j]"
      running=$(( running - 1 ))
    fi
  done
}

trap 'for p in "${pid_of[@]}"; do kill -- "$p" 2>/dev/null; done; exit 130' INT TERM

for (( j = first; j <= last; j++ )); do
  while (( max_jobs > 0 && running >= max_jobs )); do wait_one; done
  run_one "$j" &
  pid_of[$j]=$!
  running=$(( running + 1 ))
done
while (( running > 0 )); do wait_one; done

if (( ${#failed[@]} > 0 )); then
  total=$(( last - first + 1 ))
  if [[ -n "$jobvar" ]]; then
    IFS=$'\n' sorted=($(sort -n <<<"${failed[*]}")); unset IFS
    echo "run.pl: ${#failed[@]} / $total failed, log is in $(subst "$logfile" "${sorted[0]}")" >&2
  else
    echo "run.pl: job failed, log is in $logfile" >&2
  fi
  exit 1
fi
exit 0
