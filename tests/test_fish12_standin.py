"""The tiny fish-speech 1.2-sft stand-in loads and runs in fish-speech 1.2's own code (in .venv-torch).

fish-speech loads both checkpoints with strict=False, so a misnamed or misshaped tensor would be skipped
silently and the model would run on its random initialisation: this test compares every key and shape
itself. Then tools/llama/generate.py's generate_long writes codes the decoder accepts (1..1000 after the
shift, as the real model does), and tools/vqgan/inference.py's decoder turns them into finite 44.1 kHz audio
and encodes a reference clip, which is what tools/api.py does with a voice.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.torchvenv import make_standin, torch_python

CHECK = r'''
import json, os, sys
import fish_speech
src = os.path.dirname(list(fish_speech.__path__)[0])  # a namespace package in its editable install
sys.path.insert(0, src)
os.chdir(src)  # tools.vqgan.inference finds fish_speech/configs relative to itself
import torch
from loguru import logger
logger.remove()
from tools.llama.generate import generate_long, load_model
from tools.vqgan.inference import load_model as load_decoder

ckpt = sys.argv[1]
torch.manual_seed(0)
model, decode_one_token = load_model(ckpt, "cpu", torch.bfloat16)
saved = torch.load(f"{ckpt}/model.pth", map_location="cpu")
own = model.state_dict()
result = {"llm_missing": sorted(set(own) - set(saved)), "llm_unexpected": sorted(set(saved) - set(own)),
          "llm_shapes": [k for k in saved if k in own and own[k].shape != saved[k].shape],
          "llm_dtypes": sorted({str(v.dtype) for v in saved.values()})}
tok = model.tokenizer
result["ids"] = [tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<|semantic|>")]
lengths, codes = [], None
for seed in range(3):
    torch.manual_seed(seed)
    for response in generate_long(model=model, device="cpu", decode_one_token=decode_one_token,
                                  text="Hello world. 你好。", max_new_tokens=1024):
        if response.action == "sample":
            codes = response.codes
            lengths.append(codes.shape[1])
            result.setdefault("code_range", [int(codes.min()), int(codes.max())])
            result["code_range"] = [min(result["code_range"][0], int(codes.min())),
                                    max(result["code_range"][1], int(codes.max()))]
result["lengths"] = lengths
path = f"{ckpt}/firefly-gan-vq-fsq-4x1024-42hz-generator.pth"
decoder = load_decoder("firefly_gan_vq", path, device="cpu")
saved = torch.load(path, map_location="cpu")
own = decoder.state_dict()
result.update(dec_missing=sorted(set(own) - set(saved)), dec_unexpected=sorted(set(saved) - set(own)),
              dec_shapes=[k for k in saved if k in own and own[k].shape != saved[k].shape])
with torch.no_grad():
    audio = decoder.decode(indices=codes[None], feature_lengths=torch.tensor([codes.shape[1]]))
    audio = audio[0] if isinstance(audio, tuple) else audio
    reference = decoder.encode(torch.randn(1, 1, 44100) * 0.1, torch.tensor([44100]))[0]
result.update(samples=int(audio.numel()), finite=bool(torch.isfinite(audio).all()),
              rate=decoder.spec_transform.sample_rate, reference_codes=list(reference.shape))
print("RESULT " + json.dumps(result))
'''


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> dict:
    python = torch_python("fish_speech")
    model = make_standin(python, "fish-speech-1.2", tmp_path_factory.mktemp("fish12") / "ckpt", "--size", "tiny")
    done = subprocess.run([python, "-c", CHECK, str(model)], capture_output=True, text=True, timeout=900,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(Path.home())})
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_every_tensor_matches_fish_speech_model_by_name_and_shape(checked: dict) -> None:
    assert checked["llm_missing"] == [] and checked["llm_unexpected"] == [] and checked["llm_shapes"] == []
    assert checked["llm_dtypes"] == ["torch.bfloat16"]  # as upstream's model.pth
    assert checked["dec_missing"] == [] and checked["dec_unexpected"] == [] and checked["dec_shapes"] == []


def test_tokenizer_has_fish_speech_special_tokens_at_their_ids(checked: dict) -> None:
    assert checked["ids"] == [2, 4, 5]


def test_generation_ends_and_decodes_to_finite_audio(checked: dict) -> None:
    low, high = checked["code_range"]
    assert 0 <= low and high <= 999  # generate_long subtracts 1; the FSQ decoder has 8*5*5*5 codes
    assert all(0 < n < 1024 for n in checked["lengths"])  # <|im_end|> came before max_new_tokens
    assert checked["finite"] and checked["samples"] > 0 and checked["rate"] == 44100
    assert checked["reference_codes"][:2] == [1, 4]  # a reference voice encodes to 4 codebooks
