#!/usr/bin/env bash
# The recipe pipeline of unified speech-text LMs (OpusLM family), ESPnet style.
# A corpus recipe (egs2/<corpus>/speechlm1/run.sh) sets its options and calls
# this script; every stage can also be run alone with --stage N --stop_stage N.
set -euo pipefail

log() { echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (speechlm.sh:${BASH_LINENO[0]}) $*" >&2; }
fail() { log "ERROR: $*"; exit 1; }
SECONDS=0

# ---------------------------------------------------------------- options
stage=1                 # first stage to run
stop_stage=11           # last stage to run
skip_data_prep=false    # skip stages 1-2
skip_tokenizers=false   # skip stage 3 (use given tokenizers)
skip_train=false        # skip stages 7-8
skip_eval=false         # skip stages 9-10
skip_packing=false      # skip stage 11
rerun=false             # ignore the finished-stage markers
nj=4                    # parallel jobs for data stages
inference_nj=1          # parallel decoding jobs
scoring_nj=""           # Whisper processes of TTS scoring, one CPU thread each (empty: $nj)
ngpu=0                  # GPUs per node for training (0: CPU)
num_nodes=1             # nodes for training (torchrun / Slurm)
cmd=utils/run.pl        # job runner for data stages (utils/run.pl or utils/slurm.pl)
train_launcher=auto     # auto | python | torchrun | deepspeed
python=python3
dumpdir=dump
expdir=exp

# data
train_set=train
valid_set=dev
test_sets="test"
lm_text=""              # a Kaldi text file of a text-only corpus (textlm task, text LLM pretraining)
min_seconds=0.2
max_seconds=30
local_data_opts=""

# tokenizers
speech_tokenizer=""     # a fitted / released speech tokenizer dir; empty: fit one (stage 3)
fit_speech_tokenizer_args="--semantic mfcc --semantic_k 500 --acoustic mel_rvq"
text_tokenizer=""       # HF tokenizer dir or sentencepiece .model; empty: fit a BPE (stage 3)
bpe_vocab_size=500
bpe_byte_fallback=true  # characters the BPE never saw (dev/test text, inference) become byte pieces, not <unk>
base_llm=""             # HF text LLM dir that initialises the speech LM
text_llm_config=""      # with no base_llm: pretrain a text LLM with this config on lm_text (stage 3)
init_model=""           # fine-tuning: a trained speech LM (packed / exported model dir, or a checkpoints dir) that
                        # stage 7 starts from; its vocab.json is the vocabulary (stage 5). Give its tokenizers too.

# splicing
tasks="asr tts textlm audiolm"
task_ratios="asr:1.0 tts:1.0 textlm:0.5 audiolm:0.25"
speaker_prompt_len=0    # tts: frames of another utterance of the speaker (0: plain TTS)
speaker_prompt_pad=false # tts: pad a shorter speaker prompt to speaker_prompt_len (the released OpusLM layout)
splice_budget=0         # long-form: concatenate utterances of a speaker up to this many frames
splice_args=""

# training
train_config=conf/train.yaml
anneal_config=""        # empty: no annealing stage
anneal_tasks=""         # tasks of the annealing mixture (default: $tasks)
train_args=""           # dotted overrides for the train config
anneal_args=""

# decoding and scoring
decode_tasks="asr tts"
decode_config_dir=conf  # decode_<task>.yaml read from here when present
decode_args=""
tts_speaker_prompt=none # none | same_speaker
asr_model_dir=""        # Whisper (faster-whisper) dir for TTS WER; empty: Whisper base from the PyPI wheels
score_models="final"    # which models to decode: final (annealed when there is one) | pretrain | both
pretrain_decode_tasks="" # with --score_models both: the tasks decoded for the pretrained model (empty: --decode_tasks)
score_init_model=false  # true: also decode and score --init_model (model "init": the figures before fine-tuning)
results=RESULTS.md      # the results table of stage 10 (its rows also in a .json of the same name)

help_message=$(cat <<EOM
Usage: $0 [options]

Stages:
  1  data preparation      local/data.sh -> data/{\$train_set,\$valid_set,\$test_sets}
  2  format and filter     check ids/files/text, length filter -> \$dumpdir/raw/<set>
  3  tokenizers            fit the speech tokenizer, BPE and (small recipes) a text LLM
  4  token dump            speech -> int32 [T, 9] tokens, nj jobs -> \$dumpdir/tokens/<set>
  5  joint vocabulary      -> \$dumpdir/vocab.json
  6  splicing              task sequences + length statistics -> \$dumpdir/splice/<set>_<task>
  7  training              warmup-decay pretraining -> \$expdir/speechlm
  8  annealing             from stage 7's checkpoint, lr -> 0 -> \$expdir/speechlm_anneal
  9  decoding              \$decode_tasks on \$test_sets -> \$expdir/<model>/decode_<task>_<set>
 10  scoring               WER / TTS WER / perplexity -> \$results (RESULTS.md)
 11  packing               self-contained model dir -> \$expdir/packed

Options (defaults in brackets):
  --stage ($stage) --stop_stage ($stop_stage) --skip_data_prep ($skip_data_prep)
  --skip_tokenizers ($skip_tokenizers) --skip_train ($skip_train) --skip_eval ($skip_eval)
  --skip_packing ($skip_packing) --rerun ($rerun: ignore finished-stage markers)
  --nj ($nj) --inference_nj ($inference_nj) --scoring_nj (${scoring_nj:-\$nj}) --ngpu ($ngpu) --num_nodes ($num_nodes)
  --cmd ($cmd) --train_launcher ($train_launcher) --python ($python) --dumpdir ($dumpdir) --expdir ($expdir)
  --train_set ($train_set) --valid_set ($valid_set) --test_sets ($test_sets) --lm_text ($lm_text)
  --min_seconds ($min_seconds) --max_seconds ($max_seconds) --local_data_opts ($local_data_opts)
  --speech_tokenizer ($speech_tokenizer) --fit_speech_tokenizer_args ($fit_speech_tokenizer_args)
  --text_tokenizer ($text_tokenizer) --bpe_vocab_size ($bpe_vocab_size)
  --bpe_byte_fallback ($bpe_byte_fallback: unseen characters become byte pieces; 256 of the BPE's ids)
  --base_llm ($base_llm) --text_llm_config ($text_llm_config)
  --init_model ($init_model: fine-tune this trained speech LM; stage 5 takes its vocab.json, stage 7 starts
      from its weights (model.init=pretrained); pass its --speech_tokenizer and --text_tokenizer too)
  --tasks ($tasks) --task_ratios ($task_ratios) --speaker_prompt_len ($speaker_prompt_len)
  --speaker_prompt_pad ($speaker_prompt_pad) --splice_budget ($splice_budget) --splice_args ($splice_args)
  --train_config ($train_config) --anneal_config ($anneal_config) --anneal_tasks ($anneal_tasks)
  --train_args ($train_args) --anneal_args ($anneal_args)
  --decode_tasks ($decode_tasks) --decode_config_dir ($decode_config_dir) --decode_args ($decode_args)
  --tts_speaker_prompt ($tts_speaker_prompt) --asr_model_dir ($asr_model_dir) --score_models ($score_models)
  --pretrain_decode_tasks ($pretrain_decode_tasks: with --score_models both, the pretrained model's tasks; empty: --decode_tasks)
  --score_init_model ($score_init_model: also decode/score --init_model as model "init", before fine-tuning)
  --results ($results: the results table stage 10 writes, RESULTS.json beside it)
EOM
)

. ./path.sh
. utils/parse_options.sh
[ $# -ne 0 ] && { log "unexpected arguments: $*"; log "$help_message"; exit 1; }
scoring_nj=${scoring_nj:-${nj}}

# --------------------------------------------------------------- helpers
stage_dir=${expdir}/.stages
mkdir -p "${stage_dir}"
# A finished stage leaves a marker holding the options it ran with; running it
# again with the same options does nothing.
signature() { printf '%s\n' "$@" | md5sum | cut -d' ' -f1; }
is_done() {  # is_done N SIGNATURE
  [ "${rerun}" = false ] && [ -f "${stage_dir}/$1.done" ] && [ "$(cat "${stage_dir}/$1.done")" = "$2" ]
}
mark_done() {  # mark_done N SIGNATURE [OPTIONS]: OPTIONS, in words, for the messages of a later run
  echo "$2" > "${stage_dir}/$1.done.tmp" && mv "${stage_dir}/$1.done.tmp" "${stage_dir}/$1.done"
  if [ $# -ge 3 ]; then echo "$3" > "${stage_dir}/$1.options"; fi
}
run_stage() {  # run_stage N NAME: whether stage N is selected
  [ "${stage}" -le "$1" ] && [ "${stop_stage}" -ge "$1" ]
}
# the complete training checkpoints (or packed model) of a model directory, if any
has_model() { compgen -G "$1/checkpoints/step_*/trainer_state.json" > /dev/null || [ -f "$1/model.safetensors" ]; }
# Fitting a tokenizer again where one was fitted with other options would change what
# the ids of an already trained model mean, with no error anywhere: refused, as
# stage 7 refuses to continue a run with other settings.
guard_refit() {  # guard_refit MARKER FITTED_FILE "OPTIONS NOW" [HINT]
  [ "${rerun}" = false ] && [ -f "${stage_dir}/$1.done" ] && [ -f "$2" ] || return 0
  local m trained=""
  for m in "${expdir}/speechlm" "${expdir}/speechlm_anneal" "${expdir}/packed"; do
    has_model "${m}" && trained+=" ${m}"
  done
  [ -n "${trained}" ] || return 0
  fail "$2 was fitted with other options ($(cat "${stage_dir}/$1.options" 2>/dev/null || echo 'not recorded')) than now ($3),
  and models trained on its ids exist:${trained}. Fitting it again would silently change what those ids mean.
  To keep it: rerun with the options it was fitted with${4:+ ($4)}. To start over with new tokenizers: use
  another --expdir (or mv ${expdir} ${expdir}.old)."
}
begin() { log "Stage $1: $2"; stage_t0=${SECONDS}; }
end() { log "Stage $1 finished in $((SECONDS - stage_t0)) s"; }

all_sets="${train_set} ${valid_set} ${test_sets}"
[ -z "${speech_tokenizer}" ] && speech_tokenizer_dir=${expdir}/speech_tokenizer || speech_tokenizer_dir=${speech_tokenizer}
if [ -z "${text_tokenizer}" ]; then
  if [ -n "${base_llm}" ]; then text_tok=${base_llm}; else text_tok=${expdir}/text_tokenizer/bpe.model; fi
else
  text_tok=${text_tokenizer}
fi
if [ -n "${base_llm}" ]; then llm_dir=${base_llm}; elif [ -n "${text_llm_config}" ]; then llm_dir=${expdir}/text_llm; else llm_dir=""; fi
vocab=${dumpdir}/vocab.json
# the exported model inside a packed dir, a checkpoint or a checkpoints dir (its latest)
find_model_dir() {
  ${python} -c "
import sys
from espnet2_speechlm.train.checkpoint import find_model_dir
try:
    print(find_model_dir(sys.argv[1]))
except FileNotFoundError as e:
    sys.exit(f'ERROR: {e}')" "$1"
}
init_model_dir=""
if [ -n "${init_model}" ]; then
  init_model_dir=$(find_model_dir "${init_model}") || fail "--init_model ${init_model}: no trained model there"
fi

# ------------------------------------------------- stage 1: data preparation
if run_stage 1 && [ "${skip_data_prep}" = false ]; then
  begin 1 "data preparation (local/data.sh ${local_data_opts})"
  sig=$(signature "${local_data_opts}")
  if is_done 1 "${sig}"; then log "Stage 1 already done; skipping"; else
    # shellcheck disable=SC2086
    local/data.sh ${local_data_opts}
    mark_done 1 "${sig}"
  fi
  end 1
fi

# ---------------------------------------------- stage 2: format and filter
if run_stage 2 && [ "${skip_data_prep}" = false ]; then
  begin 2 "check and length-filter data dirs -> ${dumpdir}/raw"
  for dset in ${all_sets}; do
    sig=$(signature "${dset}" "${min_seconds}" "${max_seconds}" "$(cat data/${dset}/wav.scp data/${dset}/text 2>/dev/null | md5sum)")
    if is_done "2.${dset}" "${sig}"; then log "  ${dset}: already done"; continue; fi
    ${python} -m espnet2_speechlm.bin.format_data --in_dir "data/${dset}" --out_dir "${dumpdir}/raw/${dset}" \
      --min_seconds "${min_seconds}" --max_seconds "${max_seconds}"
    mark_done "2.${dset}" "${sig}"
  done
  if [ -n "${lm_text}" ]; then
    [ -s "${lm_text}" ] || fail "lm_text ${lm_text} is missing or empty"
  fi
  end 2
fi

# --------------------------------------------------- stage 3: tokenizers
if run_stage 3 && [ "${skip_tokenizers}" = false ]; then
  begin 3 "tokenizers"
  if [ -z "${speech_tokenizer}" ]; then
    sig=$(signature "${fit_speech_tokenizer_args}" "$(md5sum < ${dumpdir}/raw/${train_set}/wav.scp)")
    if is_done 3.speech "${sig}"; then log "  speech tokenizer: already fitted"; else
      guard_refit 3.speech "${speech_tokenizer_dir}/tokenizer.json" "--fit_speech_tokenizer_args '${fit_speech_tokenizer_args}'"
      # shellcheck disable=SC2086
      ${python} -m espnet2_speechlm.bin.fit_speech_tokenizer --data_dir "${dumpdir}/raw/${train_set}" \
        --out_dir "${speech_tokenizer_dir}" ${fit_speech_tokenizer_args}
      mark_done 3.speech "${sig}" "--fit_speech_tokenizer_args '${fit_speech_tokenizer_args}'"
    fi
  else
    [ -f "${speech_tokenizer}/tokenizer.json" ] || fail "${speech_tokenizer}/tokenizer.json not found"
  fi
  if [ -z "${text_tokenizer}" ] && [ -z "${base_llm}" ]; then
    texts="--text ${dumpdir}/raw/${train_set}/text"
    [ -n "${lm_text}" ] && texts="${texts} --text ${lm_text}"
    bpe_opts=""
    [ "${bpe_byte_fallback}" = true ] && bpe_opts="--byte_fallback"
    # shellcheck disable=SC2086
    sig=$(signature "${bpe_vocab_size}" "${texts}" ${bpe_opts})
    if is_done 3.bpe "${sig}"; then log "  BPE: already trained"; else
      guard_refit 3.bpe "${expdir}/text_tokenizer/bpe.model" "--bpe_vocab_size ${bpe_vocab_size} --bpe_byte_fallback ${bpe_byte_fallback}" \
        "a BPE fitted before --bpe_byte_fallback existed, or with it false: --bpe_byte_fallback false"
      # shellcheck disable=SC2086
      ${python} -m espnet2_speechlm.bin.fit_text_tokenizer ${texts} --out_prefix "${expdir}/text_tokenizer/bpe" \
        --vocab_size "${bpe_vocab_size}" ${bpe_opts}
      mark_done 3.bpe "${sig}" "--bpe_vocab_size ${bpe_vocab_size} --bpe_byte_fallback ${bpe_byte_fallback}"
    fi
  fi
  if [ -z "${base_llm}" ] && [ -n "${text_llm_config}" ]; then
    [ -n "${lm_text}" ] || fail "--text_llm_config needs --lm_text (the text corpus to pretrain on)"
    sig=$(signature "$(cat ${text_llm_config})" "${lm_text}" "${text_tok}")
    if is_done 3.textllm "${sig}"; then log "  text LLM: already pretrained"; else
      ${python} -m espnet2_speechlm.bin.pretrain_text_lm --config "${text_llm_config}" --text "${lm_text}" \
        --tokenizer "${text_tok}" --out_dir "${llm_dir}"
      mark_done 3.textllm "${sig}"
    fi
  fi
  end 3
fi

# --------------------------------------------------- stage 4: token dump
if run_stage 4; then
  begin 4 "speech token dump (nj=${nj}) -> ${dumpdir}/tokens"
  for dset in ${all_sets}; do
    # dump_tokens itself skips a complete dump and reruns only unfinished jobs
    ${python} -m espnet2_speechlm.bin.dump_tokens --data_dir "${dumpdir}/raw/${dset}" \
      --tokenizer_dir "${speech_tokenizer_dir}" --out_dir "${dumpdir}/tokens/${dset}" --nj "${nj}" --cmd "${cmd}"
  done
  end 4
fi

# ------------------------------------------------ stage 5: joint vocabulary
if run_stage 5; then
  begin 5 "joint vocabulary -> ${vocab}"
  if [ -n "${init_model_dir}" ]; then
    # fine-tuning keeps the model's own ids: its vocab.json, checked against the tokenizers
    ${python} - "${init_model_dir}/vocab.json" "${speech_tokenizer_dir}" "${text_tok}" "${vocab}" <<'EOP' \
      || fail "stage 5: --init_model ${init_model} does not fit --speech_tokenizer ${speech_tokenizer_dir} / --text_tokenizer ${text_tok}"
import sys
from espnet2_speechlm.tokenizers.speech import TokenizerMismatchError, check_fits_vocab
from espnet2_speechlm.tokenizers.text import load_text_tokenizer
from espnet2_speechlm.vocab import JointVocab
v = JointVocab.load(sys.argv[1])
try:
    check_fits_vocab(sys.argv[2], v, sys.argv[1])
except TokenizerMismatchError as e:
    sys.exit(f"ERROR: {e}")
n_text = load_text_tokenizer(sys.argv[3]).vocab_size
if n_text > v.block("text").size:
    sys.exit(f"ERROR: {sys.argv[1]}: text block of {v.block('text').size} ids, but {sys.argv[3]} has {n_text} tokens")
out = v.save(sys.argv[4])
print(f"[stage 5] {sys.argv[1]} -> {out} ({v.size} ids)", file=sys.stderr)
EOP
  else
    text_src=${llm_dir:-${text_tok}}
    ${python} -m espnet2_speechlm.bin.make_vocab --speech_tokenizer "${speech_tokenizer_dir}" \
      --text_tokenizer "${text_src}" --out "${vocab}"
  fi
  end 5
fi

# ----------------------------------------------------- stage 6: splicing
splice_one() {  # splice_one SET TASK
  local dset=$1 task=$2 out=${dumpdir}/splice/$1_$2
  local args=(--task "${task}" --vocab "${vocab}" --out "${out}" --text_tokenizer "${text_tok}")
  case ${task} in
    textlm)
      local text=${dumpdir}/raw/${dset}/text
      [ "${dset}" = "${train_set}" ] && [ -n "${lm_text}" ] && text=${lm_text}
      args+=(--text "${text}") ;;
    *)
      args+=(--tokens "${dumpdir}/tokens/${dset}/tokens.scp" --utt2num_frames "${dumpdir}/tokens/${dset}/utt2num_frames")
      [ "${task}" != audiolm ] && args+=(--text "${dumpdir}/raw/${dset}/text")
      if [ -f "${dumpdir}/raw/${dset}/utt2spk" ] && { [ "${splice_budget}" -gt 0 ] || { [ "${task}" = tts ] && [ "${speaker_prompt_len}" -gt 0 ]; }; }; then
        args+=(--utt2spk "${dumpdir}/raw/${dset}/utt2spk")
      fi
      [ "${task}" = tts ] && [ "${speaker_prompt_len}" -gt 0 ] && args+=(--speaker_prompt_len "${speaker_prompt_len}")
      [ "${task}" = tts ] && [ "${speaker_prompt_len}" -gt 0 ] && [ "${speaker_prompt_pad}" = true ] && args+=(--speaker_prompt_pad)
      [ "${dset}" = "${train_set}" ] && [ "${splice_budget}" -gt 0 ] && args+=(--splice_budget "${splice_budget}") ;;
  esac
  # shellcheck disable=SC2086
  ${python} -m espnet2_speechlm.bin.splice "${args[@]}" ${splice_args}
}
if run_stage 6; then
  begin 6 "task-sequence splicing (${tasks}) -> ${dumpdir}/splice"
  for dset in ${train_set} ${valid_set}; do
    for task in ${tasks}; do
      sig=$(signature "${task}" "${dset}" "${speaker_prompt_len}" "${speaker_prompt_pad}" "${splice_budget}" "${splice_args}" "$(md5sum < ${vocab})")
      if is_done "6.${dset}_${task}" "${sig}"; then log "  ${dset}_${task}: already done"; continue; fi
      splice_one "${dset}" "${task}"
      mark_done "6.${dset}_${task}" "${sig}"
    done
  done
  end 6
fi

# ---------------------------------------------------- stages 7-8: training
set_data_overrides() {  # set_data_overrides "TASKS": the train/valid lists as dotted overrides in data_ovr[]
  local train="[" valid="[" sep=""
  for task in $1; do
    local ratio=1.0
    for tr in ${task_ratios}; do [ "${tr%%:*}" = "${task}" ] && ratio=${tr#*:}; done
    train+="${sep}{dir: ${dumpdir}/splice/${train_set}_${task}, ratio: ${ratio}}"
    valid+="${sep}${dumpdir}/splice/${valid_set}_${task}"
    sep=", "
  done
  data_ovr=("data.train=${train}]" "data.valid=${valid}]")
}
launch_train() {  # launch_train CONFIG OVERRIDES...
  local launcher=${train_launcher}
  if [ "${launcher}" = auto ]; then
    if [ "${ngpu}" -gt 1 ] || [ "${num_nodes}" -gt 1 ]; then launcher=torchrun; else launcher=python; fi
  fi
  case ${launcher} in
    python) ${python} -m espnet2_speechlm.bin.train --config "$@" ;;
    torchrun) torchrun --nnodes "${num_nodes}" --nproc_per_node "$((ngpu > 0 ? ngpu : 1))" \
                -m espnet2_speechlm.bin.train --config "$@" ;;
    deepspeed) deepspeed --num_nodes "${num_nodes}" --num_gpus "${ngpu}" -m espnet2_speechlm.bin.train --config "$@" ;;
    *) fail "unknown --train_launcher ${launcher}" ;;
  esac
}
model_init_overrides() {
  if [ -n "${init_model_dir}" ]; then echo "model.init=pretrained" "model.pretrained_dir=${init_model_dir}"
  elif [ -n "${llm_dir}" ]; then echo "model.init=llm" "model.llm_dir=${llm_dir}"; fi
}

# A training directory resumes when the same command runs again; one begun
# with other settings is refused (its checkpoints kept) instead of being
# "resumed" into a run that matches neither.  A run that failed before its
# first checkpoint (a missing base LLM, a bad config) left nothing to keep:
# the next run, with whatever settings, takes the directory over.
claim_exp_dir() {  # claim_exp_dir DIR SIGNATURE
  local d=$1
  if has_model "${d}" && [ -f "${d}/.recipe_signature" ] && [ "$(cat "${d}/.recipe_signature")" != "$2" ]; then
    fail "${d} holds a training run begun with other settings (config, data mix, initialisation or extra args changed).
  Its checkpoints are kept. To train again: mv ${d} ${d}.old (or choose another --expdir) and rerun;
  to continue it with the new settings: rm ${d}/.recipe_signature"
  fi
  mkdir -p "${d}" && echo "$2" > "${d}/.recipe_signature"
}
file_identity() { stat -c '%n %s %Y' "$@" 2>/dev/null || true; }
# A config that starts from a text LLM (model.init: llm) with none to start from
# fails here, before the training directory is touched, saying what to pass.
check_llm_init() {  # check_llm_init CONFIG OVERRIDES...
  ${python} - "$@" <<'EOP'
import sys
from pathlib import Path
from espnet2_speechlm import config as cfgmod
try:
    model = cfgmod.apply_overrides(cfgmod.load_yaml(sys.argv[1]), sys.argv[2:]).get("model") or {}
except (cfgmod.ConfigError, OSError, ValueError) as e:
    sys.exit(f"ERROR: {e}")
llm = model.get("llm_dir") or ""
if model.get("init", "random") == "llm" and not (Path(llm) / "config.json").is_file():
    sys.exit(f"ERROR: {sys.argv[1]} starts the speech LM from a text LLM (model.init: llm), but "
             f"{'no model.llm_dir is set' if not llm else f'model.llm_dir {llm} holds no config.json'}. Either\n"
             "  pass --base_llm DIR, a local Hugging Face LLM (e.g. SmolLM2-135M; its tokenizer becomes the text block),\n"
             "  or --text_llm_config CONF --lm_text TEXT to pretrain a small one in stage 3 "
             "(egs2/mini_espeak/speechlm1/conf/text_llm.yaml),\n"
             "  or train from random weights: model.init: random and a model.hf_config in the config.\n"
             "  egs2/mini_espeak/speechlm1 is the small set-up that runs on a CPU (its conf/train.yaml).")
EOP
}

if run_stage 7 && [ "${skip_train}" = false ]; then
  begin 7 "training ${train_config} -> ${expdir}/speechlm"
  set_data_overrides "${tasks}"
  # shellcheck disable=SC2046,SC2086
  check_llm_init "${train_config}" $(model_init_overrides) ${train_args} || exit 1
  # shellcheck disable=SC2046
  claim_exp_dir "${expdir}/speechlm" "$(signature "$(cat "${train_config}")" $(model_init_overrides) "${data_ovr[@]}" "${train_args}")"
  # shellcheck disable=SC2046,SC2086
  launch_train "${train_config}" "exp_dir=${expdir}/speechlm" $(model_init_overrides) "${data_ovr[@]}" ${train_args}
  end 7
fi

if run_stage 8 && [ "${skip_train}" = false ] && [ -n "${anneal_config}" ]; then
  begin 8 "annealing ${anneal_config} -> ${expdir}/speechlm_anneal"
  set_data_overrides "${anneal_tasks:-${tasks}}"
  # the annealed model is built from the pretraining run's latest exported model
  pre_model=$(find_model_dir "${expdir}/speechlm/checkpoints") \
    || fail "no pretraining checkpoint in ${expdir}/speechlm: run stage 7 first"
  claim_exp_dir "${expdir}/speechlm_anneal" "$(signature "$(cat "${anneal_config}")" "$(file_identity "${pre_model}/model.safetensors")" \
    "${data_ovr[@]}" "${anneal_args}")"
  # shellcheck disable=SC2086
  launch_train "${anneal_config}" "exp_dir=${expdir}/speechlm_anneal" "init_from.checkpoint=${expdir}/speechlm/checkpoints" \
    model.init=pretrained "model.pretrained_dir=${pre_model}" "${data_ovr[@]}" ${anneal_args}
  end 8
fi

# ------------------------------------------------ stages 9-10: decode, score
models=""
case ${score_models} in
  final) if [ -n "${anneal_config}" ]; then models="speechlm_anneal"; else models="speechlm"; fi ;;
  pretrain) models="speechlm" ;;
  both) models="speechlm"; [ -n "${anneal_config}" ] && models="speechlm speechlm_anneal" ;;
  *) fail "unknown --score_models ${score_models}" ;;
esac
if [ "${score_init_model}" = true ]; then
  [ -n "${init_model_dir}" ] || fail "--score_init_model true needs --init_model"
  models="init ${models}"
fi
# the tasks decoded for model $1: the pretrained model of a "both" run may decode fewer
# (TTS scoring by Whisper is the slowest part of a small recipe's evaluation)
model_tasks() {
  if [ "$1" = speechlm ] && [ "${score_models}" = both ] && [ -n "${pretrain_decode_tasks}" ]; then
    echo "${pretrain_decode_tasks}"
  else
    echo "${decode_tasks}"
  fi
}
model_src() {  # the trained weights of model $1
  if [ "$1" = init ]; then echo "${init_model_dir}"; else echo "${expdir}/$1/checkpoints"; fi
}

if run_stage 9 && [ "${skip_eval}" = false ]; then
  begin 9 "decoding (${decode_tasks}) of ${test_sets} with ${models}"
  for m in ${models}; do
    ${python} -m espnet2_speechlm.bin.pack --checkpoint "$(model_src "${m}")" --out "${expdir}/${m}/pack" \
      --text_tokenizer "${text_tok}" --speech_tokenizer "${speech_tokenizer_dir}"
    for dset in ${test_sets}; do
      for task in $(model_tasks "${m}"); do
        conf_args=()
        [ -f "${decode_config_dir}/decode_${task}.yaml" ] && conf_args=(--config "${decode_config_dir}/decode_${task}.yaml")
        # shellcheck disable=SC2086
        ${python} -m espnet2_speechlm.bin.decode --model_dir "${expdir}/${m}/pack" --task "${task}" \
          --data_dir "${dumpdir}/raw/${dset}" --token_scp "${dumpdir}/tokens/${dset}/tokens.scp" \
          --out_dir "${expdir}/${m}/decode_${task}_${dset}" --nj "${inference_nj}" --cmd "${cmd}" \
          --speaker_prompt "${tts_speaker_prompt}" "${conf_args[@]}" ${decode_args}
      done
    done
  done
  end 9
fi

if run_stage 10 && [ "${skip_eval}" = false ]; then
  begin 10 "scoring -> ${results}"
  asr_model_args=()
  [ -n "${asr_model_dir}" ] && asr_model_args=(--asr_model_dir "${asr_model_dir}")
  result_dirs=""
  if echo " ${decode_tasks} " | grep -q " tts "; then
    # the same ASR model on the real test audio: the reference for TTS WER
    for dset in ${test_sets}; do
      ${python} -m espnet2_speechlm.bin.score_tts --data_dir "${dumpdir}/raw/${dset}" --out_dir "${expdir}/score_real_audio_${dset}" \
        --task tts_real_audio --test_set "${dset}" --model real_audio --nj "${scoring_nj}" "${asr_model_args[@]}"
      result_dirs+=" ${expdir}/score_real_audio_${dset}"
    done
  fi
  for m in ${models}; do
    for dset in ${test_sets}; do
      for task in $(model_tasks "${m}"); do
        d=${expdir}/${m}/decode_${task}_${dset}
        [ -d "${d}" ] || fail "${d} not found: run stage 9 first"
        case ${task} in
          asr) ${python} -m espnet2_speechlm.bin.score_asr --ref "${dumpdir}/raw/${dset}/text" --hyp "${d}/text" \
                 --out_dir "${d}/score" --task asr --test_set "${dset}" --model "${m}" ;;
          tts) ${python} -m espnet2_speechlm.bin.score_tts --wav_scp "${d}/wav.scp" --ref "${dumpdir}/raw/${dset}/text" \
                 --out_dir "${d}/score" --test_set "${dset}" --model "${m}" --nj "${scoring_nj}" "${asr_model_args[@]}" ;;
          textlm|audiolm) log "  ${task}: outputs in ${d} (scored by perplexity below)" ;;
        esac
        result_dirs+=" ${d}"
      done
      # text perplexity (with the base text LLM's for the retention ratio) and speech-continuation perplexity
      ppl_args=()
      echo " ${tasks} " | grep -q " textlm " && ppl_args+=(--text "${dumpdir}/raw/${dset}/text")
      [ -n "${llm_dir}" ] && [ -f "${llm_dir}/config.json" ] && ppl_args+=(--hf_llm_dir "${llm_dir}")
      echo " ${tasks} " | grep -q " audiolm " && ppl_args+=(--token_scp "${dumpdir}/tokens/${dset}/tokens.scp")
      if [ ${#ppl_args[@]} -gt 0 ]; then
        ${python} -m espnet2_speechlm.bin.score_ppl --model_dir "${expdir}/${m}/pack" "${ppl_args[@]}" \
          --out_dir "${expdir}/${m}/ppl_${dset}" --test_set "${dset}" --model "${m}"
        result_dirs+=" ${expdir}/${m}/ppl_${dset}"
      fi
    done
  done
  # shellcheck disable=SC2086
  ${python} -m espnet2_speechlm.bin.collect_results ${result_dirs} --out "${results}"
  log "results:\n$(cat "${results}")"
  end 10
fi

# ------------------------------------------------------- stage 11: packing
if run_stage 11 && [ "${skip_packing}" = false ]; then
  begin 11 "packing -> ${expdir}/packed"
  last=${models##* }
  ${python} -m espnet2_speechlm.bin.pack --checkpoint "$(model_src "${last}")" --out "${expdir}/packed" \
    --text_tokenizer "${text_tok}" --speech_tokenizer "${speech_tokenizer_dir}"
  if [ -f "${results}" ]; then cp "${results}" "${expdir}/packed/RESULTS.md"; fi
  end 11
fi

log "Successfully finished in ${SECONDS} s"
