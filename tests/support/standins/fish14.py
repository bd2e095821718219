"""Stand-in fishaudio/fish-speech-1.4 checkpoints and a stand-in LoRA, in fish-speech 1.4.3's own formats.

`make_fish14(out, size)` writes the files 1.4.3's code loads from `checkpoints/fish-speech-1.4`:

    config.json                                     DualARTransformer arguments (model_type dual_ar)
    model.pth                                       its state dict, bf16 like the published file
    tokenizer.json, tokenizer_config.json,          a byte-level tokenizer with the special tokens the code
    special_tokens_map.json                         uses (<|im_start|>, <|im_end|>, <|semantic|>, ...)
    firefly-gan-vq-fsq-8x1024-21hz-generator.pth    the decoder, exactly as the source's firefly_gan_vq.yaml
                                                    builds it (parameter names taken from its own modules)
    README.md                                       says these are stand-ins

`make_fish14_lora(out, base)` writes what fish-speech's LoRA fine-tuning
(`fish_speech/train.py --config-name text2semantic_finetune +lora@model.model.lora_config=r_8_alpha_16`)
saves: a Lightning checkpoint `step_000000010.ckpt` whose `state_dict` holds only the `model.*.lora_A` /
`lora_B` tensors of every layer `fish_speech/models/text2semantic/lora.py` wraps. Its values are small
multiples of a power of two, so the merge's delta (lora_B @ lora_A * alpha / r) is exact in float32 and
`lora_merge_report` can check a merged model.pth tensor by tensor.

The transformer is fish-speech 1.2's (fish12.py: same DualARTransformer, same tokenizer, same carrier
that keeps impossible codebook tokens out) with 1.4's 8 codebooks. fish-speech 1.4's generation also
refuses a frame whose main token is not <|semantic|> (its codes become padding, "Negative code found"),
which a trained model never emits; so here the <|semantic|> row of the output layer reads the carrier with
a large weight and is always sampled, and a request ends at its max_new_tokens (the API's warm-up at
max_seq_len, which the tiny config keeps short). `tiny`: a 2-layer transformer of width 64; `real`: the
published shapes (24 + 4 layers of width 1024). The decoder is the real one in both sizes: its shape is
fixed by the source's config file. The values are random, so the audio is noise.

Needs torch, and for the decoder the fish-speech 1.4.3 source (`fish_src`) with einops and
vector_quantize_pytorch importable (its quantizer's parameters come from that library).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import fish12, partial_path, write_text

DECODER_FILE = "firefly-gan-vq-fsq-8x1024-21hz-generator.pth"
DECODER_CONFIG = "fish_speech/configs/firefly_gan_vq.yaml"
LORA_RANK, LORA_ALPHA = 8, 16  # fish_speech/configs/lora/r_8_alpha_16.yaml
LORA_FILE = "step_000000010.ckpt"
SEMANTIC_WEIGHT = 4.0  # times the carrier (about 8 after the final norm): <|semantic|> wins every top-p draw
# max_seq_len bounds the API's warm-up (max_new_tokens=0 means "up to max_seq_len") and, with it, the
# real-size decoder's work on it; 192 leaves room for a request with a one-second reference voice.
TINY_MAX_SEQ_LEN = 192

README = """# Stand-in for fishaudio/fish-speech-1.4 ({size}) - NOT the real model

These files have the layout, file formats and architecture fish-speech 1.4.3 loads, filled with random
values (seed {seed}), made by imgbuild's tests (`python -m tests.support.standins fish-speech-1.4`). They
are stand-ins for tests and benchmarks on machines without the real weights: the code paths and the speed
are real, the audio is noise.

- config.json, model.pth: the text-to-semantic DualARTransformer ({params:,} values, bf16)
- tokenizer.json, tokenizer_config.json, special_tokens_map.json: a byte-level stand-in tokenizer with
  fish-speech's special tokens
- {decoder}: the firefly VQ-GAN decoder as fish_speech/configs/firefly_gan_vq.yaml defines it
"""

LORA_README = """# Stand-in LoRA for fish-speech 1.4 - NOT a real fine-tune

{file} is shaped like the checkpoint fish-speech's LoRA fine-tuning writes
(`+lora@model.model.lora_config=r_{r}_alpha_{alpha}`): a Lightning checkpoint whose state_dict holds only
the model.*.lora_A / lora_B tensors, for the stand-in base model in {base} (seed {seed}). Its values are
random, chosen so that the merged weights can be checked exactly. Merge it with fish-speech's own
tools/llama/merge_lora.py --lora-config r_{r}_alpha_{alpha}.
"""


def config_for(size: str) -> dict:
    """fish-speech-1.2-sft's arguments with 1.4's 8 codebooks (firefly-gan-vq-fsq-8x1024)."""
    cfg = {**fish12.config_for(size), "num_codebooks": 8}
    return cfg if size == "real" else {**cfg, "max_seq_len": TINY_MAX_SEQ_LEN}


def llm_state_dict(cfg: dict, generator, size: str) -> dict:
    """fish12's values (random, plus the carrier), and <|semantic|> always chosen as the main token."""
    state = fish12.llm_state_dict(cfg, generator, size)
    output = state["output.weight"].float()
    output[fish12.SPECIAL_TOKENS.index("<|semantic|>"), 0] = SEMANTIC_WEIGHT
    state["output.weight"] = output.to(state["output.weight"].dtype)
    return state


def lora_targets(shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """Weight name -> "linear" or "embedding" for every layer lora.py's setup_lora wraps."""
    targets = {}
    for name in shapes:
        module = name.removesuffix(".weight")
        if module in ("embeddings", "codebook_embeddings", "fast_embeddings"):
            targets[name] = "embedding"
        elif module in ("output", "fast_output") or module.rsplit(".", 1)[-1] in ("wqkv", "wo", "w1", "w2", "w3"):
            targets[name] = "linear"
    return targets


def decoder_state_dict(fish_src: Path, seed: int) -> dict:
    """A random state dict of the decoder the source's firefly_gan_vq.yaml builds, from its own modules."""
    import importlib

    import torch
    import yaml

    cfg = yaml.safe_load((fish_src / DECODER_CONFIG).read_text())
    sys.path.insert(0, str(fish_src))
    try:
        def build(node: dict):
            module_name, _, cls = node["_target_"].rpartition(".")
            kwargs = {k: v for k, v in node.items() if k != "_target_"}
            return getattr(importlib.import_module(module_name), cls)(**kwargs)

        torch.manual_seed(seed)
        # spec_transform (the mel front end) has no saved state; building it would import fish_speech.utils,
        # which pulls in the training stack.
        parts = {name: build(cfg[name]) for name in ("backbone", "head", "quantizer")}
    finally:
        sys.path.remove(str(fish_src))
    return {f"{name}.{key}": value.detach().clone() for name, part in parts.items()
            for key, value in part.state_dict().items()}


def make_fish14(out: Path, size: str = "tiny", seed: int = 0, fish_src: Path | None = None) -> Path:
    """Write a stand-in fishaudio/fish-speech-1.4 folder (see the module docstring); returns `out`."""
    import torch

    if fish_src is None or not (fish_src / DECODER_CONFIG).is_file():
        raise ValueError(f"fish_src must be the fish-speech 1.4.3 source folder (holding {DECODER_CONFIG})")
    cfg = config_for(size)
    out.mkdir(parents=True, exist_ok=True)
    state = llm_state_dict(cfg, torch.Generator().manual_seed(seed), size)
    with partial_path(out / "model.pth") as partial:
        torch.save(state, partial)
    write_text(out / "config.json", json.dumps(cfg, indent=4, sort_keys=True))
    for name, text in fish12.tokenizer_files(cfg).items():
        write_text(out / name, text)
    with partial_path(out / DECODER_FILE) as partial:
        torch.save(decoder_state_dict(fish_src, seed), partial)
    params = sum(t.numel() for t in state.values())
    write_text(out / "README.md", README.format(size=size, seed=seed, params=params, decoder=DECODER_FILE))
    return out


def make_fish14_lora(out: Path, base: Path, seed: int = 1) -> Path:
    """Write a stand-in LoRA checkpoint for the stand-in base in `base`; returns the .ckpt path."""
    import torch

    cfg = json.loads((base / "config.json").read_text())
    shapes = fish12.llm_shapes(cfg)
    generator = torch.Generator().manual_seed(seed)
    lora = {}
    for name, kind in lora_targets(shapes).items():
        rows, cols = shapes[name]
        module = "model." + name.removesuffix(".weight")
        # loralib: Linear A (r, in), B (out, r); Embedding A (r, num_embeddings), B (embedding_dim, r).
        a_shape, b_shape = ((LORA_RANK, cols), (rows, LORA_RANK)) if kind == "linear" else \
            ((LORA_RANK, rows), (cols, LORA_RANK))
        lora[f"{module}.lora_A"] = (torch.randint(-2, 3, a_shape, generator=generator) / 64).to(torch.bfloat16)
        lora[f"{module}.lora_B"] = (torch.randint(-2, 3, b_shape, generator=generator) / 64).to(torch.bfloat16)
    checkpoint = {"state_dict": lora, "epoch": 0, "global_step": 10, "pytorch-lightning_version": "2.4.0"}
    out.mkdir(parents=True, exist_ok=True)
    with partial_path(out / LORA_FILE) as partial:
        torch.save(checkpoint, partial)
    write_text(out / "README.md", LORA_README.format(file=LORA_FILE, r=LORA_RANK, alpha=LORA_ALPHA,
                                                     base=base, seed=seed))
    return out / LORA_FILE


def lora_merge_report(base_pth: Path, lora_ckpt: Path, merged_pth: Path) -> dict:
    """Compare a merged model.pth with base + LoRA delta, tensor by tensor.

    Expected for a wrapped layer: bf16(base + lora_B @ lora_A * alpha / r) (transposed for embeddings), as
    loralib's eval() merge computes it; every other tensor must equal the base. Returns counts and the
    names that do not match.
    """
    import torch

    base = torch.load(base_pth, map_location="cpu", weights_only=True)
    merged = torch.load(merged_pth, map_location="cpu", weights_only=True)
    lora = torch.load(lora_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    targets = lora_targets({name: tuple(t.shape) for name, t in base.items()})
    scaling = LORA_ALPHA / LORA_RANK
    report = {"tensors": len(base), "lora_tensors": 0, "unchanged": 0, "mismatched": [],
              "keys_equal": set(base) == set(merged), "max_abs_delta": 0.0}
    for name, tensor in base.items():
        kind = targets.get(name)
        if kind is None:
            expected = tensor
        else:
            module = "model." + name.removesuffix(".weight")
            delta = lora[f"{module}.lora_B"].float() @ lora[f"{module}.lora_A"].float() * scaling
            expected = (tensor.float() + (delta if kind == "linear" else delta.T)).to(tensor.dtype)
            report["lora_tensors"] += 1
            report["max_abs_delta"] = max(report["max_abs_delta"], float(delta.abs().max()))
        got = merged.get(name)
        if got is None or got.dtype != expected.dtype or not torch.equal(got, expected):
            report["mismatched"].append(name)
        elif kind is None:
            report["unchanged"] += 1
    return report


def register(models) -> None:
    """`python -m tests.support.standins fish-speech-1.4 OUT [--lora LORA_OUT] --fish-src SRC`."""
    from .__main__ import add_common

    parser = models.add_parser("fish-speech-1.4", help="fishaudio/fish-speech-1.4 (+ a LoRA); needs torch, "
                                                       "einops, vector_quantize_pytorch and the 1.4.3 source")
    add_common(parser)
    parser.add_argument("--fish-src", type=Path, required=True, help="fish-speech 1.4.3 source folder")
    parser.add_argument("--lora", type=Path, help="also write a stand-in LoRA checkpoint into this folder")

    def make(args) -> Path:
        made = make_fish14(args.out, args.size, args.seed, fish_src=args.fish_src)
        if args.lora:
            make_fish14_lora(args.lora, made, seed=args.seed + 1)
        return made

    parser.set_defaults(make=make)
