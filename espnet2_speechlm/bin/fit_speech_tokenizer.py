"""Fit the speech tokenizer of a recipe: semantic k-means and (offline) acoustic codec.

Examples::

    # offline recipe: MFCC k-means units + log-mel residual k-means codec, fitted on the recipe's data
    python -m espnet2_speechlm.bin.fit_speech_tokenizer --data_dir data/train --out_dir exp/speech_tokenizer \\
        --semantic mfcc --semantic_k 500 --acoustic mel_rvq

    # OpusLM setup: XEUS layer 18 + 5000 units, the released ESPnet DAC codec
    python -m espnet2_speechlm.bin.fit_speech_tokenizer --data_dir data/train --out_dir exp/speech_tokenizer \\
        --semantic espnet_ssl --ssl_config xeus/config.yaml --ssl_model xeus/model.pth --ssl_layer 18 \\
        --semantic_k 5000 --acoustic espnet_codec --codec_config codec/config.yaml --codec_model codec/model.pth \\
        --device cuda

    # the released OpusLM tokenizers, nothing fitted (no --data_dir needed): XEUS encoder output 18
    # (the 19th block after the final layer norm), the released k-means centres, the first 8 DAC codebooks
    python -m espnet2_speechlm.bin.fit_speech_tokenizer --out_dir exp/opuslm_tokenizer \
        --semantic espnet_ssl --ssl_config xeus/model/config.yaml --ssl_model xeus/model/xeus_checkpoint_new.pth \
        --ssl_layer 19 --ssl_use_final_output --ssl_espnet_framing --kmeans_model xeus/model/km_opus_lm.mdl \
        --acoustic espnet_codec --codec_config dac/exp/codec_train_dac_large_v1.4_raw_fs16000/config.yaml \
        --codec_model dac/exp/codec_train_dac_large_v1.4_raw_fs16000/360epoch.pth

Writes ``out_dir/tokenizer.json`` (sizes and file paths, read by the dump and
vocabulary stages) beside the fitted files.  The directory is built under a
temporary name and renamed when complete.  A random sample of at most
``--max_seconds`` of audio is used for fitting.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from pathlib import Path


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", action="append", default=[],
                   help="Kaldi data dir (repeat for several); not needed when nothing is fitted (--kmeans_model and --acoustic espnet_codec)")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--semantic", choices=["mfcc", "fbank", "espnet_ssl"], default="mfcc")
    p.add_argument("--semantic_k", type=int, default=500, help="number of k-means units")
    p.add_argument("--ssl_config"); p.add_argument("--ssl_model")
    p.add_argument("--ssl_layer", type=int, default=18)
    p.add_argument("--ssl_task", choices=["ssl", "hubert"], default="ssl")
    p.add_argument("--ssl_use_final_output", action="store_true",
                   help="read the last layer after the encoder's final layer norm (ESPnet's encode(use_final_output=True))")
    p.add_argument("--ssl_espnet_framing", action="store_true",
                   help="the audio as it is (ESPnet's framing: up to 2 SSL frames fewer than the codec's, both cut to the "
                        "shorter) instead of padding it to the codec's ceil(n / 320) frames")
    p.add_argument("--kmeans_model", help="use these centres instead of fitting new ones: a joblib-saved scikit-learn "
                   "k-means (e.g. the released km_opus_lm.mdl; only cluster_centers_ is read) or a .npy matrix")
    p.add_argument("--acoustic", choices=["mel_rvq", "espnet_codec"], default="mel_rvq")
    p.add_argument("--codec_config"); p.add_argument("--codec_model")
    p.add_argument("--num_codebooks", type=int, default=8)
    p.add_argument("--codebook_size", type=int, default=1024)
    p.add_argument("--griffin_lim_iters", type=int, default=32)
    p.add_argument("--max_seconds", type=float, default=3600.0, help="audio sampled for fitting")
    p.add_argument("--max_frames", type=int, default=300000, help="frames sampled for each k-means")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch_size", type=int, default=20000, help="k-means mini-batch (>= frames: full-batch Lloyd)")
    p.add_argument("--min_seconds", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--num_threads", type=int, default=1)
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    import torch

    from ..tokenizers.audio import SAMPLE_RATE, AudioError, iter_audio, read_data_dir
    from ..tokenizers.semantic import ESPnetSSLFeatures, SemanticTokenizer, read_centers
    from ..tokenizers.speech import SpeechTokenizer
    from ..tokenizers.features import SpectralFeatures

    torch.set_num_threads(args.num_threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    t0 = time.time()
    if args.kmeans_model and args.semantic != "espnet_ssl":
        raise SystemExit("--kmeans_model is for SSL units: give --semantic espnet_ssl with it")
    fit_nothing = bool(args.kmeans_model) and args.acoustic == "espnet_codec"
    if not args.data_dir and not fit_nothing:
        raise SystemExit("--data_dir is needed to fit the tokenizer (only --kmeans_model with --acoustic espnet_codec fits nothing)")
    items = [it for d in args.data_dir for it in read_data_dir(d)]
    random.Random(args.seed).shuffle(items)
    wavs, total, bad = [], 0.0, []
    for it, wav in iter_audio(items, min_seconds=args.min_seconds):
        if isinstance(wav, AudioError):
            bad.append(wav)
            continue
        wavs.append(wav)
        total += len(wav) / SAMPLE_RATE
        if total >= args.max_seconds:
            break
    if bad:
        print(f"[fit_speech_tokenizer] ignoring {len(bad)} bad utterance(s), e.g. {bad[0]}", file=sys.stderr)
    if not wavs and not fit_nothing:
        raise SystemExit(f"ERROR: no usable audio in {args.data_dir}")
    if wavs:
        print(f"[fit_speech_tokenizer] read {len(wavs)} utterances ({total / 60:.1f} min) from {args.data_dir} in {time.time() - t0:.1f} s", file=sys.stderr)

    centers = None
    if args.kmeans_model:  # read (and refuse) the released centres before any model is loaded
        try:
            centers = read_centers(args.kmeans_model)
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(f"ERROR: {e}")

    out = Path(args.out_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    km_kw = dict(epochs=args.epochs, batch_size=args.batch_size)

    t = time.time()
    if args.semantic == "espnet_ssl":
        if not (args.ssl_config and args.ssl_model):
            raise SystemExit("--semantic espnet_ssl needs --ssl_config and --ssl_model")
        feats = ESPnetSSLFeatures(args.ssl_config, args.ssl_model, args.ssl_layer, args.ssl_task, device=device,
                                  use_final_output=args.ssl_use_final_output, pad_to_codec=not args.ssl_espnet_framing)
    else:
        feats = SpectralFeatures({"kind": args.semantic}, device=device)
    if args.kmeans_model:
        try:
            sem = SemanticTokenizer.from_centers(feats, centers, args.kmeans_model)
        except ValueError as e:
            shutil.rmtree(tmp)
            raise SystemExit(f"ERROR: {e}")
        print(f"[fit_speech_tokenizer] semantic units: {sem.vocab_size} centres read from {args.kmeans_model}", file=sys.stderr)
    else:
        sem = SemanticTokenizer.fit(feats, wavs, args.semantic_k, max_frames=args.max_frames, seed=args.seed, verbose=True, **km_kw)
        print(f"[fit_speech_tokenizer] semantic k-means ({args.semantic_k} units) fitted in {time.time() - t:.1f} s", file=sys.stderr)

    t = time.time()
    if args.acoustic == "espnet_codec":
        if not (args.codec_config and args.codec_model):
            raise SystemExit("--acoustic espnet_codec needs --codec_config and --codec_model")
        from ..tokenizers.espnet_codec import ESPnetCodec

        ac = ESPnetCodec(args.codec_config, args.codec_model, args.num_codebooks, device=device)
    else:
        from ..tokenizers.melcodec import MelCodecConfig, MelRVQCodec

        cfg = MelCodecConfig(num_codebooks=args.num_codebooks, codebook_size=args.codebook_size,
                             griffin_lim_iters=args.griffin_lim_iters, seed=args.seed)
        ac = MelRVQCodec.fit(wavs, cfg, max_frames=args.max_frames, device=device, verbose=True, **km_kw)
        print(f"[fit_speech_tokenizer] mel codec fitted in {time.time() - t:.1f} s", file=sys.stderr)

    SpeechTokenizer(sem, ac).save(tmp)
    # the config holds absolute paths: rewrite them for the final location
    import json

    cfg_path = tmp / "tokenizer.json"
    txt = cfg_path.read_text().replace(str(tmp.resolve()), str(out.resolve()))
    cfg_path.write_text(txt)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    cfg = json.loads((out / "tokenizer.json").read_text())
    print(f"[fit_speech_tokenizer] wrote {out}/tokenizer.json: {cfg['semantic_vocab_size']} semantic units, "
          f"{cfg['num_codebooks']} x {cfg['codebook_size']} acoustic codes ({time.time() - t0:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
