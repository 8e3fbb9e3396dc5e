"""The released OpusLM speech tokenizers, as a tokenizer directory (``tokenizer.json``).

What the released models were trained on (and what this builds from local files):

* semantic: XEUS (``espnet/xeus``: ``model/xeus_checkpoint_new.pth`` and
  ``model/config.yaml``), its encoder output index 18 of 19 blocks, i.e. the
  last block after the final layer norm, with masking off, on the audio as it
  is (ESPnet's framing: the codec's frames are cut to the shorter stream), then
  the nearest of the released k-means centres (``model/km_opus_lm.mdl``,
  squared Euclidean distance in float32);
* acoustic: the ESPnet DAC codec (``exp/codec_train_dac_large_v1.4_raw_fs16000/``
  ``360epoch.pth`` and ``config.yaml``), its first 8 codebooks.

Local ids come out as for any tokenizer of this toolkit (unit 0..4999, code
0..1023); the released models' quirk for unit 0 lives in their vocabulary
(``JointVocab.semantic0_is_pad``), so the same tokenizer directory serves the
dump stage and the API alike.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import yaml

XEUS_CHECKPOINT = "xeus_checkpoint_new.pth"
KMEANS_FILE = "km_opus_lm.mdl"
CODEC_CHECKPOINT = "360epoch.pth"
XEUS_BLOCKS = 19  # the released XEUS; index 18 of its outputs is the final-normed last block


def _one(root: Path, name: str, what: str) -> Path:
    hits = sorted(p for p in root.rglob(name) if p.is_file())
    if not hits:
        raise FileNotFoundError(f"{root}: no {name} found ({what})")
    if len(hits) > 1:
        raise ValueError(f"{root}: {len(hits)} files named {name} ({', '.join(map(str, hits[:4]))}); give a directory that holds one")
    return hits[0]


def find_release_files(root: str | Path) -> dict[str, Path]:
    """Locate the released tokenizer files under ``root`` (the downloaded
    ``espnet/xeus`` and ``ftshijt/espnet_codec_dac_large_v1.4_360epoch``
    repositories, side by side or nested, keeping their own layouts)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"released tokenizer directory not found: {root}")
    xeus = _one(root, XEUS_CHECKPOINT, "the XEUS checkpoint of espnet/xeus: model/xeus_checkpoint_new.pth")
    xeus_cfg = xeus.parent / "config.yaml"
    if not xeus_cfg.exists():
        raise FileNotFoundError(f"{xeus_cfg}: the XEUS config.yaml is missing beside {xeus.name}")
    km = _one(root, KMEANS_FILE, "the released k-means of espnet/xeus: model/km_opus_lm.mdl")
    codec = _one(root, CODEC_CHECKPOINT, "the DAC codec: exp/codec_train_dac_large_v1.4_raw_fs16000/360epoch.pth")
    codec_cfg = codec.parent / "config.yaml"
    if not codec_cfg.exists():
        raise FileNotFoundError(f"{codec_cfg}: the codec's config.yaml is missing beside {codec.name}")
    return {"ssl_config": xeus_cfg, "ssl_model": xeus, "kmeans": km, "codec_config": codec_cfg, "codec_model": codec}


def xeus_layer(config: str | Path, log=lambda m: None) -> int:
    """The 1-based layer whose final-normed output is XEUS's encoder output 18:
    its last block.  A config with another number of blocks is said so (the
    replicas the tests build are smaller), never silently renumbered."""
    conf = yaml.safe_load(Path(config).read_text()) or {}
    blocks = int((conf.get("encoder_conf") or {}).get("num_blocks", 0))
    if blocks <= 0:
        raise ValueError(f"{config}: encoder_conf.num_blocks not found: not an ESPnet SSL config?")
    if blocks != XEUS_BLOCKS:
        log(f"{config}: {blocks} encoder blocks (the released XEUS has {XEUS_BLOCKS}); using the last one, final-normed")
    return blocks


def build_release_tokenizer(root: str | Path, out_dir: str | Path, device: str = "cpu", num_codebooks: int = 8,
                            log=lambda m: print(f"[opuslm_tokenizer] {m}", file=sys.stderr)) -> Path:
    """Write the released tokenizers under ``root`` as a tokenizer directory
    (``tokenizer.json`` + the k-means centres as ``.npy``); nothing is fitted."""
    from .espnet_codec import ESPnetCodec
    from .semantic import ESPnetSSLFeatures, SemanticTokenizer, read_centers
    from .speech import SpeechTokenizer

    files = find_release_files(root)
    for k, v in files.items():
        log(f"{k}: {v}")
    centers = read_centers(files["kmeans"])  # refused before any model is loaded if it is not a k-means
    layer = xeus_layer(files["ssl_config"], log)
    feats = ESPnetSSLFeatures(files["ssl_config"], files["ssl_model"], layer, "ssl", device=device, use_final_output=True,
                              pad_to_codec=False)
    sem = SemanticTokenizer.from_centers(feats, centers, files["kmeans"])
    codec = ESPnetCodec(files["codec_config"], files["codec_model"], num_codebooks, device=device)
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    SpeechTokenizer(sem, codec).save(tmp)
    cfg_path = tmp / "tokenizer.json"
    cfg_path.write_text(cfg_path.read_text().replace(str(tmp.resolve()), str(out.resolve())))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log(f"wrote {out}/tokenizer.json: {sem.vocab_size} semantic units (layer {layer}, final-normed), "
        f"{codec.num_codebooks} x {codec.codebook_size} codes")
    return out
