"""Configs of tiny ESPnet models in the released layouts, shared by the tokenizer tests.

``ssl_config`` is an SSLTask (HuBERT-style) config: the transformer encoder of
a generic SSL checkpoint, or the E-Branchformer of XEUS with its mask settings
(ESPnet's ``encode`` applies them even in eval mode). ``dac_config`` is a
GANCodecTask DAC codec config.
"""

from __future__ import annotations

_ENCODERS = {
    "transformer": {"output_size": 32, "attention_heads": 2, "linear_units": 64, "num_blocks": 3},
    "e_branchformer": {"output_size": 32, "attention_heads": 2, "linear_units": 64, "cgmlp_linear_units": 64,
                       "num_blocks": 3, "cgmlp_conv_kernel": 7},
}


def ssl_config(encoder: str = "transformer", num_classes: int = 20, mask: dict | None = None) -> dict:
    return {
        "token_list": ["<unk>"] + [str(i) for i in range(num_classes)],
        "input_size": None,
        "frontend": "wav2vec_cnn",
        "frontend_conf": {"norm_mode": "layer_norm", "conv_mode": "standard", "bias": False, "normalize_audio": True},
        "specaug": None, "specaug_conf": {},
        "normalize": None, "normalize_conf": {},
        "preencoder": "linear", "preencoder_conf": {"output_size": 32},
        "encoder": encoder,
        "encoder_conf": {**_ENCODERS[encoder], "dropout_rate": 0.0, "positional_dropout_rate": 0.0,
                         "attention_dropout_rate": 0.0, "input_layer": None},
        "loss": [{"name": "hubert", "conf": {"num_classes": num_classes, "final_dim": 16}}],
        "util": [{"name": "mask", "conf": dict(mask or {})}],
        "model": "espnet", "model_conf": {},
        "init": None,
    }


def dac_config(n_q: int = 8, bins: int = 1024, bandwidth: float = 4.0) -> dict:
    return {"codec": "dac", "codec_conf": {"sampling_rate": 16000, "generator_params": {
        "hidden_dim": 16, "encdec_n_filters": 4, "encdec_ratios": [8, 5, 4, 2], "encdec_lstm": 1,
        "quantizer_n_q": n_q, "quantizer_bins": bins, "quantizer_kmeans_init": False,
        "quantizer_target_bandwidth": [bandwidth], "quantizer_dropout": False}}, "model_conf": {}}
