#!/usr/bin/env bash
# Create a new recipe folder that uses this TEMPLATE:
#   egs2/TEMPLATE/speechlm1/setup.sh egs2/my_corpus/speechlm1
# It links speechlm.sh, path.sh, utils, copies cmd.sh and conf/, and writes a
# run.sh skeleton and a local/data.sh to fill in.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 <new-recipe-dir>   (e.g. egs2/my_corpus/speechlm1)" >&2
  exit 1
fi
template=$(cd "$(dirname "$0")" && pwd)
dir=$1
if [ -e "${dir}" ]; then
  echo "$0: ${dir} already exists; not touching it" >&2
  exit 1
fi
mkdir -p "${dir}/local" "${dir}/conf"
# relative links, so the repository can be moved
rel=$(python3 -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "${template}" "${dir}")
for f in speechlm.sh path.sh utils; do
  ln -s "${rel}/${f}" "${dir}/${f}"
done
cp "${template}/cmd.sh" "${dir}/cmd.sh"
cp -r "${template}/conf/." "${dir}/conf/"
cat > "${dir}/run.sh" <<'EOS'
#!/usr/bin/env bash
# Recipe entry point: corpus options, then the shared pipeline.
set -euo pipefail
. ./cmd.sh

./speechlm.sh \
    --cmd "${cmd}" \
    --train_set train --valid_set dev --test_sets "test" \
    --train_config conf/train_speechlm.yaml \
    --decode_tasks "asr tts" \
    "$@"
EOS
cat > "${dir}/local/data.sh" <<'EOS'
#!/usr/bin/env bash
# Stage 1: write Kaldi data dirs data/{train,dev,test} with wav.scp, text,
# utt2spk (and segments if the audio is long recordings).
#   wav.scp   <utt> <path or "command |">
#   text      <utt> <transcript>
#   utt2spk   <utt> <speaker>
set -euo pipefail
echo "local/data.sh: fill in the data preparation of this corpus" >&2
exit 1
EOS
chmod +x "${dir}/run.sh" "${dir}/local/data.sh"
echo "created ${dir}: edit local/data.sh and conf/, then run ./run.sh"
