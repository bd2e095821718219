"""Stand-in fishaudio/fish-speech-1.2-sft checkpoints: the real files and architecture, random values.

`make_fish12(out_dir, size)` writes every file fish-speech 1.2's code loads
(tools/llama/generate.py `load_model`, tools/vqgan/inference.py `load_model`, tools/api.py):

    config.json                                   DualARTransformer arguments (BaseModelArgs.from_pretrained)
    tokenizer.json, tokenizer_config.json,        a byte-level BPE tokenizer with the special tokens the code
    special_tokens_map.json                       uses (<|im_start|>, <|im_end|>, <|semantic|>, ...), at the
                                                  ids of fish-speech's tools/llama/rebuild_tokenizer.py
    model.pth                                     the LLM's state dict, torch.save, bf16 (as upstream)
    firefly-gan-vq-fsq-4x1024-42hz-generator.pth  the decoder as fish_speech/configs/firefly_gan_vq.yaml
                                                  defines it (the API builds it from that config by name)
    README.md                                     says these are stand-ins

`tiny`: a 2-layer LLM of width 64 (seconds to make and run); the decoder is always the full
firefly_gan_vq architecture (about 42 M values, fp32 as upstream), since the API builds it from the config.
`real`: the published LLM shape (24 + 4 layers of 1024, vocabulary 32000): model.pth is within a fraction
of a percent of the real file's 980,602,750 bytes. Speed measured on `real` is real; the audio is noise.

Needs torch only. The decoder's parameter names and shapes are listed in fish12_decoder.json, taken from
fish-speech 1.2's own FireflyArchitecture (`state_dict()` of the instantiated config); the tests load
both files into fish-speech's code with no missing and no unexpected keys.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from . import Size, partial_path, write_text

REPO = "fishaudio/fish-speech-1.2-sft"
DECODER_FILE = "firefly-gan-vq-fsq-4x1024-42hz-generator.pth"
DECODER_SAMPLE_RATE = 44100  # firefly_gan_vq.yaml spec_transform.sample_rate
FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "model.pth",
         DECODER_FILE, "README.md")
# The order of fish-speech's tools/llama/rebuild_tokenizer.py: ids 0..6. generate() defaults im_end_id to 4.
SPECIAL_TOKENS = ("<|begin_of_sequence|>", "<|end_of_sequence|>", "<|im_start|>", "<|im_sep|>", "<|im_end|>",
                  "<|semantic|>", "<|pad|>")

# The published fish-speech-1.2-sft config.json; `tiny` changes the sizes only.
REAL_CONFIG = {
    "attention_qkv_bias": False, "codebook_size": 1024, "dim": 1024, "dropout": 0.1, "head_dim": 64,
    "initializer_range": 0.02, "intermediate_size": 4096, "max_seq_len": 4096, "model_type": "dual_ar",
    "n_fast_layer": 4, "n_head": 16, "n_layer": 24, "n_local_heads": 2, "norm_eps": 1e-06,
    "num_codebooks": 4, "rope_base": 1000000.0, "tie_word_embeddings": False,
    "use_gradient_checkpointing": True, "vocab_size": 32000,
}
TINY_CHANGES = {"dim": 64, "head_dim": 16, "intermediate_size": 128, "n_head": 4, "n_local_heads": 2,
                "n_layer": 2, "n_fast_layer": 1, "vocab_size": 512}


def config_for(size: Size) -> dict:
    return REAL_CONFIG if size == "real" else {**REAL_CONFIG, **TINY_CHANGES}


def llm_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of fish_speech.models.text2semantic.llama.DualARTransformer."""
    dim, head_dim = cfg["dim"], cfg["dim"] // cfg["n_head"]
    qkv = (cfg["n_head"] + 2 * cfg["n_local_heads"]) * head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.weight": (cfg["vocab_size"], dim),
        "codebook_embeddings.weight": (cfg["codebook_size"] * cfg["num_codebooks"], dim),
    }

    def block(prefix: str) -> None:
        shapes[f"{prefix}.attention.wqkv.weight"] = (qkv, dim)
        if cfg["attention_qkv_bias"]:
            shapes[f"{prefix}.attention.wqkv.bias"] = (qkv,)
        shapes[f"{prefix}.attention.wo.weight"] = (dim, dim)
        shapes[f"{prefix}.feed_forward.w1.weight"] = (cfg["intermediate_size"], dim)
        shapes[f"{prefix}.feed_forward.w3.weight"] = (cfg["intermediate_size"], dim)
        shapes[f"{prefix}.feed_forward.w2.weight"] = (dim, cfg["intermediate_size"])
        shapes[f"{prefix}.ffn_norm.weight"] = (dim,)
        shapes[f"{prefix}.attention_norm.weight"] = (dim,)

    for i in range(cfg["n_layer"]):
        block(f"layers.{i}")
    shapes["norm.weight"] = (dim,)
    if not cfg["tie_word_embeddings"]:
        shapes["output.weight"] = (cfg["vocab_size"], dim)
    shapes["fast_embeddings.weight"] = (cfg["codebook_size"], dim)
    for i in range(cfg["n_fast_layer"]):
        block(f"fast_layers.{i}")
    shapes["fast_norm.weight"] = (dim,)
    shapes["fast_output.weight"] = (cfg["codebook_size"], dim)
    return shapes


# Random values would let the fast transformer emit codebook tokens the decoder has no code for (token 0 is
# padding; tokens above 1000 exceed the 8*5*5*5 FSQ codes), which the real model never does. So dimension 0
# of the residual stream is held at a positive constant (embeddings set it, no layer writes it), and the
# output rows of impossible tokens read it with a large negative weight: they are never sampled.
CARRIER = 1.0
IMPOSSIBLE = -10.0
DECODER_CODES = 8 * 5 * 5 * 5  # firefly_gan_vq.yaml quantizer levels
# tiny only: <|im_end|> reads the carrier too, so a request ends after about a hundred tokens instead of
# running to max_new_tokens (real keeps random rows: benchmarks fix the token count themselves).
TINY_END_WEIGHT = 0.18


def llm_state_dict(cfg: dict, generator, size: Size = "tiny") -> dict:
    """Random values as the model's own _init_weights draws them (normal, std initializer_range), norms 1,
    plus the carrier described above."""
    import torch

    state = {}
    for name, shape in llm_shapes(cfg).items():
        if name.endswith("norm.weight"):
            value = torch.ones(shape)
        elif name.endswith(".bias"):
            value = torch.zeros(shape)
        else:
            value = torch.empty(shape).normal_(0.0, cfg["initializer_range"], generator=generator)
        if name.endswith(("embeddings.weight")):
            value[:, 0] = CARRIER
        elif name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
            value[0, :] = 0.0
        elif name == "fast_output.weight":
            value[:, 0] = 0.0
            value[0, 0] = IMPOSSIBLE
            value[DECODER_CODES + 1:, 0] = IMPOSSIBLE
        elif name == "output.weight" and size == "tiny":
            value[SPECIAL_TOKENS.index("<|im_end|>"), 0] = TINY_END_WEIGHT
        state[name] = value.to(torch.bfloat16)
    return state


def decoder_state_dict(generator) -> dict:
    """The firefly_gan_vq decoder's state dict with values of the scale torch's default init gives, so the
    stand-in decodes to bounded noise instead of overflowing."""
    import torch

    entries = json.loads((Path(__file__).with_name("fish12_decoder.json")).read_text())
    state: dict = {}
    for name, shape in entries:
        if name.endswith("parametrizations.weight.original0"):
            continue  # weight norm's magnitude: set from its direction below, so the weight equals the direction
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        if name.endswith(("bias", ".beta")):
            value = torch.zeros(shape)
        elif name.endswith(".gamma"):  # ConvNeXt layer scale, initialised to 1e-6 upstream
            value = torch.full(shape, 1e-6)
        elif len(shape) == 1:  # norm weights
            value = torch.ones(shape)
        else:
            value = torch.empty(shape).uniform_(-1.0, 1.0, generator=generator) / math.sqrt(fan_in)
        state[name] = value
    for name, shape in entries:
        if name.endswith("parametrizations.weight.original0"):
            direction = state[name[: -len("original0")] + "original1"]
            dims = tuple(range(1, direction.dim()))
            state[name] = direction.norm(dim=dims, keepdim=True).reshape(shape)
    return {name: state[name] for name, _ in entries}


def byte_alphabet() -> list[str]:
    """The 256 characters byte-level BPE writes bytes as (GPT-2's bytes_to_unicode), in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def tokenizer_files(cfg: dict) -> dict[str, str]:
    """tokenizer.json (byte-level BPE, no merges: each byte is a token) and transformers' two side files."""
    added = [{"id": i, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, token in enumerate(SPECIAL_TOKENS)]
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in byte_alphabet():
        vocab[char] = len(vocab)
    if len(vocab) > cfg["vocab_size"]:
        raise ValueError(f"tokenizer has {len(vocab)} tokens, more than vocab_size {cfg['vocab_size']}")
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": byte_level, "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }
    special_map = {"bos_token": SPECIAL_TOKENS[0], "eos_token": SPECIAL_TOKENS[1], "pad_token": SPECIAL_TOKENS[6]}
    tokenizer_config = {
        "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added},
        **special_map, "clean_up_tokenization_spaces": True, "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    return {"tokenizer.json": json.dumps(tokenizer, ensure_ascii=False, indent=2),
            "tokenizer_config.json": json.dumps(tokenizer_config, indent=2),
            "special_tokens_map.json": json.dumps(special_map, indent=2)}


README = """# Stand-in for {repo} ({size})

These files are NOT the fish-speech 1.2-sft model. They are stand-ins made by imgbuild's tests
(`python -m tests.support.standins fish-speech-1.2 OUT --size {size} --seed {seed}`): the real file names,
formats and architecture, filled with random values.

- `model.pth`: fish-speech's DualARTransformer state dict (torch.save, bf16), {llm_params:,} values{llm_note}.
- `{decoder}`: the firefly_gan_vq decoder (fish_speech/configs/firefly_gan_vq.yaml), fp32, {decoder_params:,}
  values.
- `config.json`, `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`: the model arguments
  and a byte-level tokenizer with the special tokens fish-speech uses.

They load and run in fish-speech 1.2's own code. The speech they produce is noise: audio quality cannot be
judged with them. Generation speed on the `real` size is the real model's speed, because it does not depend
on the values.
"""


def make_fish12(out_dir: Path, size: Size = "tiny", seed: int = 0) -> Path:
    """Write the stand-in checkpoint folder; returns `out_dir`."""
    import torch

    if size not in ("tiny", "real"):
        raise ValueError(f"size must be 'tiny' or 'real', not {size!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = config_for(size)
    generator = torch.Generator().manual_seed(seed)
    write_text(out_dir / "config.json", json.dumps(cfg, indent=4, sort_keys=True))
    for name, text in tokenizer_files(cfg).items():
        write_text(out_dir / name, text)
    llm = llm_state_dict(cfg, generator, size)
    with partial_path(out_dir / "model.pth") as partial:
        torch.save(llm, partial)
    decoder = decoder_state_dict(generator)
    with partial_path(out_dir / DECODER_FILE) as partial:
        torch.save(decoder, partial)
    write_text(out_dir / "README.md", README.format(
        repo=REPO, size=size, seed=seed, decoder=DECODER_FILE,
        llm_params=sum(t.numel() for t in llm.values()),
        llm_note=" (the real parameter count)" if size == "real" else " (a small model of the same architecture)",
        decoder_params=sum(t.numel() for t in decoder.values())))
    return out_dir


def register(models: argparse._SubParsersAction) -> None:
    from .__main__ import add_common

    parser = models.add_parser("fish-speech-1.2", help=f"{REPO} (needs torch)")
    add_common(parser)
    parser.set_defaults(make=lambda args: make_fish12(args.out, args.size, args.seed))
