# Sourced by every recipe script: the toolkit's virtual environment and paths.
# resolve symlinks: a recipe links this file from TEMPLATE, possibly by absolute path
MAIN_ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../.." && pwd)
if [ ! -x "${MAIN_ROOT}/tools/venv/bin/python" ]; then
  echo "path.sh: ${MAIN_ROOT}/tools/venv is missing: run 'make install' in ${MAIN_ROOT}" >&2
  return 1 2>/dev/null || exit 1
fi
export PATH="${MAIN_ROOT}/tools/venv/bin:${MAIN_ROOT}/utils:${PATH}"
export PYTHONPATH="${MAIN_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONUNBUFFERED=1
# nothing is ever fetched from a model hub at run time
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export LC_ALL=C.UTF-8
