"""Stand-in SparkTTS-0.5B checkpoints: the real file layout and architecture, random values.

`make_spark(out_dir, size)` writes every file Spark-TTS's code loads (cli/SparkTTS.py,
sparktts/models/audio_tokenizer.py, sparktts/models/bicodec.py):

    config.yaml                          sample rate, reference clip length, volume normalization
    LLM/                                 Qwen2ForCausalLM: config.json, generation_config.json,
                                         model.safetensors, tokenizer files with SparkTTS's tokens
    BiCodec/config.yaml, model.safetensors
    wav2vec2-large-xlsr-53/              config.json, preprocessor_config.json, pytorch_model.bin
    README.md                            says these are stand-ins

`tiny`: small layers (seconds to make and to run), the same token vocabulary (8192 semantic codes, 4096
global codes), so every code path runs. `real`: the real shapes: Qwen2.5-0.5B with SparkTTS's 166,000-entry
embedding, BiCodec as the published config, wav2vec2-large-xlsr-53 (24 layers of 1024). Speed measured on
`real` is real; the audio is noise, because the values are random.

Needs torch, transformers, safetensors, omegaconf and Spark-TTS's `sparktts` package (BiCodec's parameter
names come from its modules): pass `spark_src`, or have `sparktts` importable.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from . import Size

SEMANTIC_CODES = 8192  # BiCodec's quantizer codebook_size
GLOBAL_CODES = 4096  # 4**6: the speaker encoder's FSQ levels [4, 4, 4, 4, 4, 4]
LEVELS = 5  # very_low .. very_high (sparktts/utils/token_parser.py LEVELS_MAP)

# The top-level config.yaml of SparkTTS-0.5B (read by SparkTTS and BiCodecTokenizer).
TOP_CONFIG = {
    "highpass_cutoff_freq": 40,
    "sample_rate": 16000,
    "segment_duration": 2.4,
    "max_val_duration": 12,
    "latent_hop_length": 320,
    "ref_segment_duration": 6,
    "volume_normalize": True,
}


def _bicodec_config(size: str) -> dict:
    """BiCodec/config.yaml's audio_tokenizer section. `real` is the published one; `tiny` keeps the code
    books, the mel front end and the 320-sample hop (8*5*4*2), and shrinks the widths."""
    real = size == "real"
    feat = 1024 if real else 64  # wav2vec2 hidden size = encoder input
    width = 1024 if real else 64  # latent / condition width
    vocos = dict(vocos_dim=384, vocos_intermediate_dim=2048) if real else dict(vocos_dim=32,
                                                                              vocos_intermediate_dim=64)
    return {
        "mel_params": {"sample_rate": 16000, "n_fft": 1024, "win_length": 640, "hop_length": 320,
                       "mel_fmin": 10, "mel_fmax": None, "num_mels": 128},
        "encoder": {"input_channels": feat, **vocos, "vocos_num_layers": 12 if real else 1,
                    "out_channels": width, "sample_ratios": [1, 1]},
        "decoder": {"input_channel": width, "channels": 1536 if real else 64, "rates": [8, 5, 4, 2],
                    "kernel_sizes": [16, 11, 8, 4]},
        "quantizer": {"input_dim": width, "codebook_size": SEMANTIC_CODES, "codebook_dim": 8,
                      "commitment": 0.25, "codebook_loss_weight": 2.0, "use_l2_normlize": True,
                      "threshold_ema_dead_code": 0.2},
        "speaker_encoder": {"input_dim": 128, "out_dim": width, "latent_dim": 128 if real else 32,
                            "token_num": 32, "fsq_levels": [4, 4, 4, 4, 4, 4], "fsq_num_quantizers": 1},
        "prenet": {"input_channels": width, **vocos, "vocos_num_layers": 12 if real else 1,
                   "out_channels": width, "condition_dim": width, "sample_ratios": [1, 1],
                   "use_tanh_at_final": False},
        "postnet": {"input_channels": width, **vocos, "vocos_num_layers": 6 if real else 1,
                    "out_channels": feat, "use_tanh_at_final": False},
    }


def spark_tokens() -> list[str]:
    """SparkTTS's added vocabulary: task and structure tokens, style labels, the codec's codes."""
    tasks = ["vc", "tts", "asr", "s2s", "t2s", "understand", "cap", "controllable_tts", "prompt_tts", "edit"]
    out = [f"<|task_{t}|>" for t in tasks]
    for part in ("content", "global_token", "semantic_token", "style_label"):
        out += [f"<|start_{part}|>", f"<|end_{part}|>"]
    out += [f"<|gender_{i}|>" for i in range(2)] + [f"<|age_{i}|>" for i in range(5)]
    out += [f"<|emotion_{i}|>" for i in range(25)]
    for label in ("pitch", "pitch_var", "loudness", "speed"):
        out += [f"<|{label}_label_{i}|>" for i in range(LEVELS)]
    out += [f"<|bicodec_global_{i}|>" for i in range(GLOBAL_CODES)]
    out += [f"<|bicodec_semantic_{i}|>" for i in range(SEMANTIC_CODES)]
    return out


def _write_tokenizer(llm_dir: Path) -> int:
    """A byte-level BPE tokenizer like Qwen2's (every byte is a token; no merges), with Qwen's chat
    specials and SparkTTS's tokens added as normal (non-special) tokens, as SparkTTS needs: it decodes with
    skip_special_tokens=True and still finds the codec tokens. Returns the vocabulary size."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in spark_tokens()])
    fast = Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                              unk_token=None, bos_token=None, model_max_length=32768)
    fast.save_pretrained(llm_dir)
    return len(fast)


def _write_llm(llm_dir: Path, size: str) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    n_tokens = _write_tokenizer(llm_dir)
    eos = n_tokens - len(spark_tokens()) - 1  # <|im_end|>
    shape = (dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=166000) if size == "real" else
             dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=n_tokens))
    config = Qwen2Config(**shape, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, use_sliding_window=False, sliding_window=32768,
                         max_window_layers=21, bos_token_id=eos - 2, eos_token_id=eos, torch_dtype="float32")
    config.architectures = ["Qwen2ForCausalLM"]
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.save_pretrained(llm_dir, safe_serialization=True)
    GenerationConfig(bos_token_id=eos - 2, eos_token_id=eos, pad_token_id=eos - 2).save_pretrained(llm_dir)


def _write_wav2vec2(w2v_dir: Path, size: str, hidden: int) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    # BiCodec averages hidden states 11, 14 and 16: at least 16 layers in either size.
    config = Wav2Vec2Config(
        hidden_size=hidden, num_hidden_layers=24 if size == "real" else 16,
        num_attention_heads=16 if size == "real" else 2, intermediate_size=4096 if size == "real" else 128,
        conv_dim=(512,) * 7 if size == "real" else (32,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_bias=True, feat_extract_norm="layer",
        do_stable_layer_norm=True, num_conv_pos_embeddings=128 if size == "real" else 16,
        num_conv_pos_embedding_groups=16 if size == "real" else 2, feat_extract_activation="gelu",
        mask_time_prob=0.075, vocab_size=32)
    config.architectures = ["Wav2Vec2ForPreTraining"]
    Wav2Vec2Model(config).save_pretrained(w2v_dir, safe_serialization=False)  # pytorch_model.bin, as upstream
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(w2v_dir)


def _write_bicodec(bicodec_dir: Path, size: str) -> None:
    from omegaconf import OmegaConf
    from safetensors.torch import save_file
    from sparktts.models.bicodec import BiCodec

    cfg = _bicodec_config(size)
    OmegaConf.save(OmegaConf.create({**TOP_CONFIG, "audio_tokenizer": cfg}), bicodec_dir / "config.yaml")
    from sparktts.modules.encoder_decoder.feat_decoder import Decoder
    from sparktts.modules.encoder_decoder.feat_encoder import Encoder
    from sparktts.modules.encoder_decoder.wave_generator import WaveGenerator
    from sparktts.modules.speaker.speaker_encoder import SpeakerEncoder
    from sparktts.modules.vq.factorized_vector_quantize import FactorizedVectorQuantize

    model = BiCodec(mel_params=cfg["mel_params"], encoder=Encoder(**cfg["encoder"]),
                    decoder=WaveGenerator(**cfg["decoder"]), quantizer=FactorizedVectorQuantize(**cfg["quantizer"]),
                    speaker_encoder=SpeakerEncoder(**cfg["speaker_encoder"]), prenet=Decoder(**cfg["prenet"]),
                    postnet=Decoder(**cfg["postnet"]))
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(bicodec_dir / "model.safetensors"))


README = """# Stand-in SparkTTS-0.5B ({size}) — NOT the real model

These files have the layout, the file formats and the architecture of SparkAudio/Spark-TTS-0.5B, but
every weight is a random value (seed {seed}), made by imgbuild's tests
(`python -m tests.support.standins spark-tts OUT --size {size}`). They load and run with Spark-TTS's own
code, so speed measured on them is real; the audio they produce is noise, never speech.

- `config.yaml`: sample rate and reference settings of SparkTTS-0.5B.
- `LLM/`: a Qwen2ForCausalLM ({llm}) and a byte-level tokenizer with SparkTTS's tokens
  (`<|task_tts|>`, `<|bicodec_semantic_N|>` for N < 8192, `<|bicodec_global_N|>` for N < 4096, style labels).
  Token ids differ from the real tokenizer's.
- `BiCodec/`: BiCodec's config.yaml and model.safetensors ({bicodec}).
- `wav2vec2-large-xlsr-53/`: a Wav2Vec2 feature extractor ({w2v}).
"""


def make_spark(out_dir: Path, size: Size = "tiny", seed: int = 0,
               spark_src: Path | None = None) -> Path:
    """Write a stand-in SparkTTS-0.5B folder at `out_dir` (made whole under out_dir.partial, then renamed)
    and return `out_dir`."""
    if size not in ("tiny", "real"):
        raise ValueError(f"size must be 'tiny' or 'real', not {size!r}")
    if spark_src is not None and str(spark_src) not in sys.path:
        sys.path.insert(0, str(spark_src))
    import torch

    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("LLM", "BiCodec", "wav2vec2-large-xlsr-53"):
        (tmp / sub).mkdir(parents=True)
    from omegaconf import OmegaConf

    OmegaConf.save(OmegaConf.create(TOP_CONFIG), tmp / "config.yaml")
    _write_llm(tmp / "LLM", size)
    _write_bicodec(tmp / "BiCodec", size)
    _write_wav2vec2(tmp / "wav2vec2-large-xlsr-53", size, _bicodec_config(size)["encoder"]["input_channels"])
    shapes = {"real": ("Qwen2.5-0.5B shape: 24 layers of 896, 166,000 embeddings, float32",
                       "the published BiCodec config", "wav2vec2-large-xlsr-53 shape: 24 layers of 1024"),
              "tiny": ("2 layers of 64", "narrow layers, the real code books and 320-sample hop",
                       "16 layers of 64")}[size]
    (tmp / "README.md").write_text(README.format(size=size, seed=seed, llm=shapes[0], bicodec=shapes[1],
                                                 w2v=shapes[2]))
    (tmp / "standin.json").write_text(json.dumps({"model": "SparkAudio/Spark-TTS-0.5B", "standin": True,
                                                  "size": size, "seed": seed}) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def register(models: argparse._SubParsersAction) -> None:
    from .__main__ import add_common

    parser = models.add_parser("spark-tts", help="SparkAudio/Spark-TTS-0.5B (needs torch, transformers, sparktts)")
    add_common(parser)
    parser.add_argument("--spark-src", type=Path, help="Spark-TTS source folder (holding sparktts/)")
    parser.set_defaults(make=lambda args: make_spark(args.out, args.size, args.seed, spark_src=args.spark_src))
