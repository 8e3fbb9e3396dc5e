#!/usr/bin/env bash
# Stage 1 of mini_espeak: English sentences (of a small grammar, or from Debian's
# fortunes) spoken by espeak-ng voices (test voices and sentences held out), plus a
# text-only corpus.
set -euo pipefail
text_source=grammar   # grammar: a 177-word grammar (local/grammar.py); fortunes: real sentences (Debian fortunes)
vocab_words=500       # fortunes: sentences made of the N most frequent words
lm_sentences=20000    # grammar: sentences of the text-only corpus
num_test=60
voices_per_sentence=4
max_train_sentences=0
clause_voices=0       # >0: also speak the clauses of in-vocabulary sentences (more short training texts)
speed_range=130:200   # espeak-ng words per minute of the training speech
train_speakers=0      # >0: that many training speakers drawn from accents x variants x pitches (0: 8 fixed voices)
. ./path.sh
. utils/parse_options.sh

need=()
command -v espeak-ng >/dev/null || need+=(espeak-ng)
[ "${text_source}" = fortunes ] && [ ! -d /usr/share/games/fortunes ] && need+=(fortunes)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "local/data.sh: installing ${need[*]} (Debian)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "local/data.sh: please install the Debian packages: ${need[*]}" >&2
    exit 1
  fi
fi
python local/make_corpus.py --data data --wav_dir downloads/wav --text_source "${text_source}" \
  --vocab_words "${vocab_words}" --lm_sentences "${lm_sentences}" --num_test "${num_test}" \
  --voices_per_sentence "${voices_per_sentence}" --max_train_sentences "${max_train_sentences}" \
  --clause_voices "${clause_voices}" --speed_range "${speed_range}" --train_speakers "${train_speakers}"
