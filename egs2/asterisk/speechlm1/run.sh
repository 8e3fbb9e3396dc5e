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
#
# A released OpusLM model instead (imported first, with its own XEUS / k-means / DAC tokenizers; decoded
# with the release's rules; ZeRO-2 for 1.7B, ZeRO-3 for 7B, or --train_args "engine.name=fsdp2"):
#   ./run.sh --released_model OpusLM_1.7B_Anneal --base_llm SmolLM2-1.7B --released_tokenizers released_tok \
#            --model_size 1.7b --ngpu 8
#   --released_model: the downloaded release (model.pth, config.yaml, decode_default.yaml) or a directory
#                     already written by bin/import_opuslm;
#   --released_tokenizers: the downloaded espnet/xeus and DAC codec files, or a tokenizer directory;
#   --base_llm: the body's Hugging Face config.json and tokenizer (not needed for an imported directory).
set -euo pipefail
fast=false
pretrained=../../mini_espeak/speechlm1/exp/packed   # packed / exported model of the small recipe
speech_tokenizer=""    # default: ${pretrained}/speech_tokenizer
text_tokenizer=""      # default: ${pretrained}/text_tokenizer.model (the mini recipe's BPE)
released_model=""      # a released OpusLM model (see above)
released_tokenizers="" # its speech tokenizers
base_llm=""            # the released model's body config and tokenizer
model_size=1.7b        # 1.7b | 7b: which fine-tuning config (conf/opuslm, conf/opuslm_7b)
. ./path.sh
. ./cmd.sh
# pick off the options of this script before the rest go to speechlm.sh
args=()
while [ $# -gt 0 ]; do
  case $1 in
    --fast|--pretrained|--speech_tokenizer|--text_tokenizer|--released_model|--released_tokenizers|--base_llm|--model_size)
      [ $# -ge 2 ] || { echo "$0: $1 needs a value" >&2; exit 1; }
      declare "${1#--}=$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done

if [ -n "${released_model}" ]; then
  # stage 0: the release as this toolkit's model directory (bin/import_opuslm), and its speech tokenizers
  [ -n "${released_tokenizers}" ] || { echo "$0: --released_model needs --released_tokenizers" >&2; exit 1; }
  if [ -f "${released_model}/speechlm.yaml" ]; then
    pretrained=${released_model}  # imported already
  else
    pretrained=exp/released_model
    sig=$(printf '%s\n' "$(cd "${released_model}" && pwd)" "${base_llm}" "${released_tokenizers}" | md5sum | cut -d' ' -f1)
    if [ "$(cat "${pretrained}/.import_signature" 2>/dev/null)" = "${sig}" ]; then
      echo "$0: ${pretrained} already imported from ${released_model}" >&2
    else
      base_args=()
      [ -n "${base_llm}" ] && base_args=(--base_llm "${base_llm}")
      python -m espnet2_speechlm.bin.import_opuslm --model_dir "${released_model}" --out "${pretrained}" \
        --speech_tokenizer "${released_tokenizers}" "${base_args[@]}"
      echo "${sig}" > "${pretrained}/.import_signature"
    fi
  fi
  if [ -f "${released_tokenizers}/tokenizer.json" ]; then
    speech_tokenizer=${released_tokenizers}
  elif [ "${pretrained}" = exp/released_model ]; then
    speech_tokenizer=${pretrained}/speech_tokenizer  # built from the downloaded files by the import
  else
    [ -f exp/released_tokenizer/tokenizer.json ] || python - "${released_tokenizers}" exp/released_tokenizer <<'EOP'
import sys
from espnet2_speechlm.tokenizers.opuslm import build_release_tokenizer
build_release_tokenizer(sys.argv[1], sys.argv[2])
EOP
    speech_tokenizer=exp/released_tokenizer
  fi
  text_tokenizer=${pretrained}/text_tokenizer
fi
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
speaker_prompt_len=150
speaker_prompt_pad=false
tts_speaker_prompt=same_speaker
if [ -n "${released_model}" ]; then
  case ${fast}/${model_size} in
    true/*) conf=conf/fast/opuslm
            # the released tokenizers (an ESPnet SSL model and codec) cost more per utterance than the small recipe's
            data_opts="--num_test 4 --num_dev 2 --max_train 16" ;;
    */1.7b) conf=conf/opuslm ;;
    */7b) conf=conf/opuslm_7b ;;
    *) echo "$0: --model_size must be 1.7b or 7b" >&2; exit 1 ;;
  esac
  # the release's speaker prompts: a 500-frame window of another utterance of the speaker,
  # pad frames filling a shorter one, in fine-tuning (splicing) and in decoding alike
  speaker_prompt_len=500
  speaker_prompt_pad=true
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
    --speaker_prompt_len "${speaker_prompt_len}" --speaker_prompt_pad "${speaker_prompt_pad}" \
    --train_config "${conf}/finetune.yaml" \
    --decode_tasks "asr tts" \
    --decode_config_dir "${conf}" \
    --tts_speaker_prompt "${tts_speaker_prompt}" \
    --score_models final \
    --score_init_model true \
    --results "${results}" \
    "${args[@]}"
