#!/usr/bin/env bash
# Kaldi-style option parsing for recipe scripts.  Source it after declaring
# the options as shell variables with their defaults:
#
#   stage=1
#   nj=4
#   . utils/parse_options.sh
#
# Then "--stage 3", "--stage=3" and "--nj 8" set those variables; an option
# whose variable was not declared is an error (a typo must not be ignored).
# Dashes in option names map to underscores (--stop-stage -> stop_stage).
# "--config FILE" sources FILE first (lines of name=value).  "--help" / "-h"
# prints $help_message (if set) and exits 0.  Positional arguments stay in "$@".

while true; do
  [ -z "${1:-}" ] && break
  case "$1" in
    --help|-h)
      if [ -z "${help_message:-}" ]; then echo "No help found." 1>&2; else printf "%s\n" "$help_message" 1>&2; fi
      exit 0 ;;
    --*=*)
      __name=$(echo "${1%%=*}" | sed 's/^--//; s/-/_/g')
      __value="${1#*=}"
      shift ;;
    --*)
      __name=$(echo "$1" | sed 's/^--//; s/-/_/g')
      if [ $# -lt 2 ]; then echo "$0: option $1 needs a value" 1>&2; exit 1; fi
      __value="$2"
      shift 2 ;;
    *) break ;;
  esac
  if [ "$__name" = config ]; then
    if [ ! -f "$__value" ]; then echo "$0: config file $__value not found" 1>&2; exit 1; fi
    . "$__value" || exit 1
    continue
  fi
  # the variable must exist (declared with a default before sourcing us)
  if ! eval "[ -n \"\${$__name+x}\" ]"; then
    echo "$0: invalid option --$__name (no such option; see --help)" 1>&2
    exit 1
  fi
  # booleans stay booleans
  __old=$(eval "echo \"\${$__name}\"")
  if [ "$__old" = true ] || [ "$__old" = false ]; then
    if [ "$__value" != true ] && [ "$__value" != false ]; then
      echo "$0: option --$__name expects true or false, got '$__value'" 1>&2
      exit 1
    fi
  fi
  printf -v "$__name" '%s' "$__value"
done
unset __name __value __old
true
