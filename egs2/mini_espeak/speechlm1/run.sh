#!/usr/bin/env bash
# mini_espeak: a small speech-text LM trained offline on CPU in about 30 minutes.
# Sentences spoken by espeak-ng voices; tokenizers, a tiny text LLM and the speech
# LM are all fitted here.
#   --corpus grammar   (default) a 177-word grammar of everyday sentences (local/grammar.py)
#   --corpus fortunes  sentences of Debian's fortunes over 500 words: a larger variant,
#                      which the 30-minute budget does not teach to transcribe
#   --fast true        the same pipeline at tiny sizes in a few minutes, on fortunes text
#                      (the integration test; its byte-fallback BPE meets new text in asterisk)
set -euo pipefail
fast=false
corpus=grammar
. ./path.sh
. ./cmd.sh
# pick off --fast before the rest of the options go to speechlm.sh
args=()
while [ $# -gt 0 ]; do
  case $1 in
    --fast) fast=$2; shift 2 ;;
    --fast=*) fast=${1#*=}; shift ;;
    --corpus) corpus=$2; shift 2 ;;
    --corpus=*) corpus=${1#*=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

# ASR gets most of the steps: it is the task that 20 CPU minutes can begin to teach;
# TTS, text and speech continuation are kept in the mix at lower rates
task_ratios="asr:1.0 tts:0.3 textlm:0.1 audiolm:0.05"
if [ "${fast}" = true ]; then
  conf=conf/fast
  results=RESULTS_fast.md   # not the tracked RESULTS.md of the full run (git ignores this one)
  data_opts="--text_source fortunes --max_train_sentences 40 --num_test 10 --voices_per_sentence 2 --train_speakers 12"
  tok_args="--semantic mfcc --semantic_k 32 --acoustic mel_rvq --codebook_size 32 --epochs 3 --griffin_lim_iters 4"
  bpe=400                   # 256 byte pieces (byte fallback) + about 100 merges
  byte_fallback=true
elif [ "${corpus}" = grammar ]; then
  conf=conf
  results=RESULTS.md
  # 6,000 grammar sentences, one rendering each by one of 8 training voices at a random
  # speed; dev and test sentences are unseen, test spoken by 2 unseen voices
  data_opts="--text_source grammar --num_test 60 --voices_per_sentence 1 --max_train_sentences 6000 --lm_sentences 20000 --speed_range 140:210"
  tok_args="--semantic mfcc --semantic_k 500 --acoustic mel_rvq --codebook_size 1024 --max_frames 80000 --epochs 5 --num_threads 2"
  # the grammar's 177 words need few pieces; every dev and test character is in
  # the training text, so no byte fallback (which alone would take 256 ids)
  bpe=256
  byte_fallback=false
elif [ "${corpus}" = fortunes ]; then
  conf=conf/fortunes
  results=RESULTS_fortunes.md
  # whole sentences (4 voices each) and their clauses (2 voices each): more short texts
  # over the same 500 words
  data_opts="--vocab_words 500 --num_test 60 --voices_per_sentence 4 --clause_voices 2 --speed_range 140:210"
  tok_args="--semantic mfcc --semantic_k 500 --acoustic mel_rvq --codebook_size 1024 --max_frames 80000 --epochs 5 --num_threads 2"
  bpe=1000
  # every sentence, dev and test included, uses only the 500 words the BPE's text
  # (train + lm_text) is made of
  byte_fallback=false
else
  echo "run.sh: --corpus must be grammar or fortunes, not '${corpus}'" >&2
  exit 1
fi
# the decoding settings are the same for both corpora
decode_conf=conf
[ "${fast}" = true ] && decode_conf=conf/fast

./speechlm.sh \
    --cmd "${cmd}" --nj 2 --inference_nj 1 \
    --train_set train --valid_set dev --test_sets test \
    --lm_text data/lm_text/text \
    --local_data_opts "${data_opts}" \
    --fit_speech_tokenizer_args "${tok_args}" \
    --bpe_vocab_size "${bpe}" --bpe_byte_fallback "${byte_fallback}" \
    --text_llm_config "${conf}/text_llm.yaml" \
    --tasks "asr tts textlm audiolm" \
    --task_ratios "${task_ratios}" \
    --speaker_prompt_len 150 \
    --train_config "${conf}/train.yaml" \
    --anneal_config "${conf}/anneal.yaml" \
    --anneal_tasks "asr tts textlm" \
    --decode_tasks "asr tts" \
    --decode_config_dir "${decode_conf}" \
    --tts_speaker_prompt same_speaker \
    --score_models both \
    --results "${results}" \
    "${args[@]}"
