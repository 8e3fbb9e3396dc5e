#!/usr/bin/env bash
# Stage 1 of librispeech: download LibriSpeech from openslr (resource 12) and
# write Kaldi data dirs data/{train_960,dev_clean,dev_other,test_clean,test_other}.
#
#   local/data.sh                                     # download into downloads/, then prepare
#   local/data.sh --librispeech_dir /corpora/LibriSpeech   # an extracted copy you already have: no download
#   local/data.sh --train_parts train-clean-100,train-clean-360 --train_set train_460   # a subset
#
# Archives (about 60 GB for all of them) are fetched with wget or curl,
# resumed when interrupted, and extracted; a part counts as done when
# <dir>/<part>/.complete exists.  Nothing is downloaded when --librispeech_dir
# is given or with --download false.
set -euo pipefail
download_dir=downloads
librispeech_dir=""          # an extracted LibriSpeech dir (holding dev-clean/ ...); empty: ${download_dir}/LibriSpeech
url_base=https://www.openslr.org/resources/12   # or a mirror, e.g. https://us.openslr.org/resources/12
download=true
remove_archives=false       # true: delete each .tar.gz once it is extracted
train_parts="train-clean-100 train-clean-360 train-other-500"
train_set=train_960         # data/<train_set>: the union of train_parts
eval_parts="dev-clean dev-other test-clean test-other"
. ./path.sh
. utils/parse_options.sh
train_parts=${train_parts//,/ }   # also accepted comma-separated (one word inside --local_data_opts)
eval_parts=${eval_parts//,/ }

log() { echo "local/data.sh: $*" >&2; }
fetch() {  # fetch URL OUT: resumable download to OUT
  local url=$1 out=$2
  if command -v wget >/dev/null; then
    wget --continue --tries=5 --progress=dot:giga -O "${out}.part" "${url}"
  elif command -v curl >/dev/null; then
    curl --fail --location --retry 5 --continue-at - --output "${out}.part" "${url}"
  else
    log "ERROR: neither wget nor curl is installed"; exit 1
  fi
  mv "${out}.part" "${out}"
}

if [ -z "${librispeech_dir}" ]; then
  librispeech_dir=${download_dir}/LibriSpeech
  for part in ${eval_parts} ${train_parts}; do
    if [ -f "${librispeech_dir}/${part}/.complete" ]; then log "${part}: already extracted"; continue; fi
    [ "${download}" = true ] || { log "ERROR: ${librispeech_dir}/${part} is missing and --download is false"; exit 1; }
    mkdir -p "${download_dir}"
    tgz=${download_dir}/${part}.tar.gz
    if [ ! -f "${tgz}" ]; then
      log "downloading ${url_base}/${part}.tar.gz"
      fetch "${url_base}/${part}.tar.gz" "${tgz}"
    fi
    log "extracting ${tgz}"
    rm -rf "${librispeech_dir:?}/${part}"
    # the archives hold LibriSpeech/<part>/...
    tar -xzf "${tgz}" -C "${download_dir}" || { log "ERROR: extracting ${tgz} failed (a damaged download? delete it and run again)"; exit 1; }
    [ -d "${librispeech_dir}/${part}" ] || { log "ERROR: ${tgz} did not contain LibriSpeech/${part}"; exit 1; }
    touch "${librispeech_dir}/${part}/.complete"
    if [ "${remove_archives}" = true ]; then rm -f "${tgz}"; fi
  done
else
  [ -d "${librispeech_dir}" ] || { log "ERROR: --librispeech_dir ${librispeech_dir}: not a directory"; exit 1; }
  log "using the extracted corpus in ${librispeech_dir} (no download)"
fi

# shellcheck disable=SC2086
python local/prepare_librispeech.py --root "${librispeech_dir}" --data data --parts ${eval_parts} \
  --combine "${train_set}" ${train_parts}
