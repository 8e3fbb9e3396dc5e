#!/usr/bin/env bash
# librispeech: the paper-scale OpusLM recipe on LibriSpeech 960 h.
#
#   ./run.sh --model_size smollm2_1.7b --base_llm /models/SmolLM2-1.7B \
#       --xeus_config /models/xeus/config.yaml --xeus_model /models/xeus/model.pth \
#       --codec_config /models/dac_16k/config.yaml --codec_model /models/dac_16k/model.pth \
#       --ngpu 8 --num_nodes 1
#
# --model_size picks conf/<size>/{train,anneal}.yaml: smollm2_135m, smollm2_360m,
# smollm2_1.7b (DeepSpeed ZeRO-1) or olmo2_7b (ZeRO-3).  --base_llm is a local
# Hugging Face directory of that model (config.json, weights, tokenizer); its
# tokenizer is the text block of the vocabulary.  The speech tokenizer is fitted
# in stage 3 from the released XEUS (layer 18, 5000 k-means units) and the
# released ESPnet DAC codec (8 x 1024, 16 kHz, hop 320), all read from local
# files (nothing is fetched from a model hub); or pass --speech_tokenizer DIR of
# one fitted before.  Stage 1 downloads LibriSpeech from openslr unless
# --librispeech_dir names an extracted copy.  Any other option goes to speechlm.sh
# (e.g. --stage 7 --train_args "engine.grad_accum=8").
#
# Each size has its own exp/<size> and dump/<size> (the text block, hence the
# vocabulary and the task sequences, differ between SmolLM2 and OLMo-2).  To
# train another size on the same speech tokens without fitting again, pass
# --speech_tokenizer exp/<first size>/speech_tokenizer.  Multi-GPU training runs
# through torchrun (--ngpu N, --num_nodes M; the DeepSpeed engine is the config's).
set -euo pipefail
model_size=smollm2_1.7b
base_llm=""
xeus_config=downloads/models/xeus/config.yaml
xeus_model=downloads/models/xeus/model.pth
codec_config=downloads/models/dac_16k/config.yaml
codec_model=downloads/models/dac_16k/model.pth
librispeech_dir=""      # an extracted LibriSpeech (dev-clean/ ...); empty: download into downloads/
train_parts="train-clean-100 train-clean-360 train-other-500"
train_set=train_960
. ./path.sh
. ./cmd.sh
# pick off the options of this script; the rest go to speechlm.sh (a later option wins)
args=()
stage=1
user_tokenizer=false
while [ $# -gt 0 ]; do
  case $1 in
    --model_size|--base_llm|--xeus_config|--xeus_model|--codec_config|--codec_model|--librispeech_dir|--train_parts|--train_set)
      [ $# -ge 2 ] || { echo "$0: $1 needs a value" >&2; exit 1; }
      declare "${1#--}=$2"; shift 2 ;;
    *)
      case $1 in
        --stage) stage=$2 ;;
        --speech_tokenizer|--fit_speech_tokenizer_args) user_tokenizer=true ;;
      esac
      args+=("$1"); shift ;;
  esac
done

case ${model_size} in
  smollm2_135m|smollm2_360m|smollm2_1.7b|olmo2_7b) ;;
  *) echo "$0: unknown --model_size ${model_size} (smollm2_135m | smollm2_360m | smollm2_1.7b | olmo2_7b)" >&2; exit 1 ;;
esac
conf=conf/${model_size}
if [ -z "${base_llm}" ] || [ ! -f "${base_llm}/config.json" ]; then
  echo "$0: --base_llm must be a local Hugging Face model directory (config.json, weights, tokenizer) of ${model_size}, got '${base_llm}'" >&2
  exit 1
fi
tok_args="--semantic espnet_ssl --ssl_config ${xeus_config} --ssl_model ${xeus_model} --ssl_layer 18 --semantic_k 5000"
tok_args+=" --acoustic espnet_codec --codec_config ${codec_config} --codec_model ${codec_model}"
if [ "${stage}" -le 3 ] && [ "${user_tokenizer}" = false ]; then
  for f in "${xeus_config}" "${xeus_model}" "${codec_config}" "${codec_model}"; do
    [ -f "${f}" ] || { echo "$0: ${f} not found: give the released XEUS and ESPnet DAC files" \
      "(--xeus_config/--xeus_model/--codec_config/--codec_model) or --speech_tokenizer DIR" >&2; exit 1; }
  done
fi
train_parts=$(echo ${train_parts} | tr ' ' ,)   # one word for speechlm.sh's --local_data_opts
data_opts="--train_parts ${train_parts} --train_set ${train_set}"
[ -n "${librispeech_dir}" ] && data_opts+=" --librispeech_dir ${librispeech_dir}"

./speechlm.sh \
    --cmd "${cmd}" --nj 32 --inference_nj 8 \
    --train_set "${train_set}" --valid_set dev_clean --test_sets "test_clean test_other" \
    --max_seconds 40 \
    --local_data_opts "${data_opts}" \
    --fit_speech_tokenizer_args "${tok_args}" \
    --base_llm "${base_llm}" \
    --tasks "asr tts textlm audiolm" \
    --task_ratios "asr:1.0 tts:1.0 textlm:0.25 audiolm:0.25" \
    --speaker_prompt_len 500 \
    --train_config "${conf}/train.yaml" \
    --anneal_config "${conf}/anneal.yaml" \
    --anneal_tasks "asr tts" \
    --expdir "exp/${model_size}" --dumpdir "dump/${model_size}" \
    --decode_tasks "asr tts" \
    --decode_config_dir conf \
    --tts_speaker_prompt same_speaker \
    --score_models final \
    "${args[@]}"
