#!/usr/bin/env bash
# asterisk: fine-tune the small speech LM of egs2/mini_espeak (trained on espeak
# speech) on real recorded speech, the Debian asterisk prompts (one speaker,
# 8 kHz telephone prompts resampled to 16 kHz), and score ASR WER and TTS WER
# on held-out prompts before (model "init") and after (model "speechlm") fine-tuning.
#
# The starting model keeps its tokenizers and vocabulary: nothing is fitted here.
#   ./run.sh                                 # needs ../../mini_espeak/speechlm1/exp/packed (its make demo / ./run.sh)
#   ./run.sh --pretrained /path/to/packed    # any packed model (dir with speech_tokenizer/, text_tokenizer.model)
#   ./run.sh --fast true --pretrained DIR    # tiny sizes, a couple of minutes (the integration test)
set -euo pipefail
fast=false
pretrained=../../mini_espeak/speechlm1/exp/packed   # packed / exported model of the small recipe
speech_tokenizer=""    # default: ${pretrained}/speech_tokenizer
text_tokenizer=""      # default: ${pretrained}/text_tokenizer.model (the mini recipe's BPE)
. ./path.sh
. ./cmd.sh
# pick off the options of this script before the rest go to speechlm.sh
args=()
while [ $# -gt 0 ]; do
  case $1 in
    --fast|--pretrained|--speech_tokenizer|--text_tokenizer)
      [ $# -ge 2 ] || { echo "$0: $1 needs a value" >&2; exit 1; }
      declare "${1#--}=$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
speech_tokenizer=${speech_tokenizer:-${pretrained}/speech_tokenizer}
text_tokenizer=${text_tokenizer:-${pretrained}/text_tokenizer.model}
for f in "${pretrained}" "${speech_tokenizer}/tokenizer.json" "${text_tokenizer}"; do
  if [ ! -e "${f}" ]; then
    echo "$0: ${f} not found: train the small recipe first (cd ../../mini_espeak/speechlm1 && ./run.sh)," \
         "or give --pretrained DIR (a packed model dir; --speech_tokenizer, --text_tokenizer if not inside it)" >&2
    exit 1
  fi
done

if [ "${fast}" = true ]; then
  conf=conf/fast
  results=RESULTS_fast.md   # not the tracked RESULTS.md of the full run (git ignores this one)
  data_opts="--num_test 6 --num_dev 4 --max_train 30"
else
  conf=conf
  results=RESULTS.md
  data_opts="--num_test 60 --num_dev 30"
fi

./speechlm.sh \
    --cmd "${cmd}" --nj 2 --inference_nj 1 \
    --train_set train --valid_set dev --test_sets test \
    --local_data_opts "${data_opts}" \
    --speech_tokenizer "${speech_tokenizer}" \
    --text_tokenizer "${text_tokenizer}" \
    --init_model "${pretrained}" \
    --tasks "asr tts" \
    --task_ratios "asr:1.0 tts:1.0" \
    --speaker_prompt_len 150 \
    --train_config "${conf}/finetune.yaml" \
    --decode_tasks "asr tts" \
    --decode_config_dir "${conf}" \
    --tts_speaker_prompt same_speaker \
    --score_models final \
    --score_init_model true \
    --results "${results}" \
    "${args[@]}"
