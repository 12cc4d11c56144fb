"""A tiny, randomly initialised streaming Sortformer saved as a `.nemo` file.

The real model's weights live on a model hub only, so tests build this one
offline instead: the same architecture (mel front end, 8x subsampling
FastConformer, Transformer, 4 sigmoid speaker outputs) at 2 layers x 64 wide,
about 0.3 M parameters. It predicts nonsense, but it loads, streams and keeps
state exactly like the real one, which is what the tests check.

`full_size=True` builds the published model's dimensions instead (17 x 512
FastConformer, 18 x 192 Transformer, ~117 M parameters), still with random
weights: it costs what the real model costs, for benchmarks.
"""

from __future__ import annotations

from pathlib import Path

WIDTH = 64
LAYERS = 2
MEL_FEATURES = 128


def tiny_sortformer_config(full_size: bool = False) -> dict:
    """Architecture config of the streaming 4-speaker Sortformer, scaled down unless `full_size`."""
    width, layers, tf_width, tf_layers = (512, 17, 192, 18) if full_size else (WIDTH, LAYERS, WIDTH, LAYERS)
    return {
        "sample_rate": 16000,
        "max_num_of_spks": 4,
        "streaming_mode": True,
        "pil_weight": 0.5,
        "ats_weight": 0.5,
        "model_defaults": {"fc_d_model": width, "tf_d_model": tf_width},
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16000,
            "normalize": "NA",
            "window_size": 0.025,
            "window_stride": 0.01,
            "window": "hann",
            "features": MEL_FEATURES,
            "n_fft": 512,
            "frame_splicing": 1,
            "dither": 0.00001,
        },
        "sortformer_modules": {
            "_target_": "nemo.collections.asr.modules.sortformer_modules.SortformerModules",
            "num_spks": 4,
            "dropout_rate": 0.5,
            "fc_d_model": width,
            "tf_d_model": tf_width,
            "subsampling_factor": 8,
            "spkcache_len": 188,
            "fifo_len": 188,
            "chunk_len": 6,
            "spkcache_update_period": 144,
            "chunk_left_context": 1,
            "chunk_right_context": 7,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": MEL_FEATURES,
            "feat_out": -1,
            "n_layers": layers,
            "d_model": width,
            "subsampling": "dw_striding",
            "subsampling_factor": 8,
            "subsampling_conv_channels": 256 if full_size else width,
            "ff_expansion_factor": 4 if full_size else 2,
            "self_attention_model": "rel_pos",
            "n_heads": 8 if full_size else 4,
            "att_context_size": [-1, -1],
            "conv_kernel_size": 9,
            "conv_norm_type": "batch_norm",
            "dropout": 0.1,
            "dropout_pre_encoder": 0.1,
            "dropout_emb": 0.0,
            "dropout_att": 0.1,
        },
        "transformer_encoder": {
            "_target_": "nemo.collections.asr.modules.transformer.transformer_encoders.TransformerEncoder",
            "num_layers": tf_layers,
            "hidden_size": tf_width,
            "inner_size": 4 * tf_width if full_size else 2 * tf_width,
            "num_attention_heads": 8 if full_size else 4,
            "attn_score_dropout": 0.5,
            "attn_layer_dropout": 0.5,
            "ffn_dropout": 0.5,
            "hidden_act": "relu",
            "pre_ln": False,
            "pre_ln_final_layer_norm": True,
        },
        "loss": {"_target_": "nemo.collections.asr.losses.bce_loss.BCELoss", "weight": None, "reduction": "mean"},
    }


def build_tiny_sortformer_nemo(path: Path | str, seed: int = 0, full_size: bool = False) -> Path:
    """Build the model with random weights (deterministic for `seed`) and save it to `path`."""
    import torch
    from omegaconf import OmegaConf
    from nemo.collections.asr.models import SortformerEncLabelModel

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = SortformerEncLabelModel(cfg=OmegaConf.create(tiny_sortformer_config(full_size)))
    model.eval()
    model.save_to(str(path))
    return path
