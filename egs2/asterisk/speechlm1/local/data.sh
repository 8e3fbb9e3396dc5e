#!/usr/bin/env bash
# Stage 1 of asterisk: the Debian asterisk prompts (real recorded speech, one
# speaker, 8 kHz) resampled to 16 kHz, with held-out prompts for dev and test.
# Writes data/{train,dev,test}/{wav.scp,text,utt2spk} and data/local/dropped_prompts.txt.
set -euo pipefail
num_test=60       # held-out prompts for test
num_dev=30        # and for dev
max_train=0       # 0: all the other prompts
seed=0
transcripts=/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz
sounds=/usr/share/asterisk/sounds/en_US_f_Allison
. ./path.sh
. utils/parse_options.sh

need=()
[ -f "${transcripts}" ] || need+=(asterisk-core-sounds-en)
[ -d "${sounds}" ] || need+=(asterisk-core-sounds-en-wav)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "local/data.sh: installing ${need[*]} (Debian)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "local/data.sh: please install the Debian packages: ${need[*]} (sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
python local/prepare_asterisk.py --transcripts "${transcripts}" --sounds "${sounds}" --data data \
  --wav_dir downloads/wav16k --num_test "${num_test}" --num_dev "${num_dev}" --max_train "${max_train}" --seed "${seed}"
