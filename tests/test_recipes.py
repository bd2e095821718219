"""Every recipe in recipes/ passes `imgbuild check` and `imgbuild plan`, and the real-model recipes say what
their sources say (fish-speech's API flags and files, SparkTTS's model folder).

The real-model recipes need the user's files (source zips, voices, a LoRA folder) and a folder or page of
CPU torch wheels, named by environment variables. `check` stays strict: without them it names the variable
and the line. Here they point at small placeholder files made in a temporary folder; the images are not
built (their sources and weights are not on the test machine).
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from imgbuild.cli import app

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
# The app Containerfiles of the real-model recipes (the others have their own tests).
CONTAINERFILES = [REPO / "Containerfiles" / name for name in ("fish-speech.Containerfile", "spark-tts.Containerfile",
                                                               "fish-speech-lora.Containerfile")]
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "WORKDIR", "EXPOSE", "CMD", "ENTRYPOINT", "LABEL",
                "USER", "VOLUME", "SHELL", "HEALTHCHECK", "STOPSIGNAL", "ONBUILD"}
# The files of fishaudio/fish-speech-1.2-sft the fish-speech 1.2 image uses (README.md aside).
FISH_12_FILES = {"config.json", "model.pth", "firefly-gan-vq-fsq-4x1024-42hz-generator.pth", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json"}
TOOLS_API_COMMAND = ("python3 -m tools.api --listen 0.0.0.0:8080 --llama-checkpoint-path checkpoints/fish-speech-1.2-sft "
                 "--decoder-checkpoint-path checkpoints/fish-speech-1.2-sft/firefly-gan-vq-fsq-4x1024-42hz-generator.pth "
                 "--decoder-config-name firefly_gan_vq --device cpu")


@pytest.fixture(scope="module")
def user_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Placeholders for the files a user names in the environment."""
    root = tmp_path_factory.mktemp("user-files")
    for name, top in (("fish-speech.zip", "fish-speech-main"), ("spark-tts.zip", "Spark-TTS-main")):
        with zipfile.ZipFile(root / name, "w") as zf:
            zf.writestr(f"{top}/pyproject.toml", "[project]\nname = 'placeholder'\n")
            zf.writestr(f"{top}/requirements.txt", "torch==2.5.1\n")
    voices = root / "ref_data" / "1paimon" / "e1"
    voices.mkdir(parents=True)
    (voices / "2003_1.wav").write_bytes(b"RIFF")
    (voices / "2003_1.lab").write_text("placeholder", encoding="utf-8")
    lora = root / "results" / "checkpoints" / "step_000000010.ckpt"  # what LoRA fine-tuning writes
    lora.parent.mkdir(parents=True)
    lora.write_bytes(b"placeholder")
    wheels = root / "wheels"
    wheels.mkdir()
    return {"FISH_SPEECH_ZIP": str(root / "fish-speech.zip"), "FISH_REF_DATA": str(root / "ref_data"),
            "FISH_REFERENCES": str(root / "ref_data"), "FISH_LORA_CKPT": str(lora),
            "SPARK_TTS_ZIP": str(root / "spark-tts.zip"), "SPARK_REF_DATA": str(root / "ref_data"),
            "TORCH_CPU_WHEELS": str(wheels)}


def invoke(args: list[str], env: dict[str, str]):
    return CliRunner().invoke(app, args, env=env)


def test_recipes_are_there() -> None:
    names = {p.name for p in RECIPES}
    assert {"fish-speech-1.2-sft-cpu.yaml", "fish-speech-lora.yaml", "spark-tts-cpu.yaml",
            "torch-cpu-base.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_passes_check_and_plan(recipe: Path, user_files: dict[str, str], tmp_path: Path) -> None:
    # A recipe added later may need variables of its own (`${NAME}` without a default): they get an empty
    # placeholder folder, which is enough for check and plan; the ones above are real-looking files.
    env = dict(user_files)
    for name in set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", recipe.read_text())) - set(env):
        env[name] = str(tmp_path / name)
        (tmp_path / name).mkdir()
    checked = invoke(["check", str(recipe), "--json"], env)
    assert checked.exit_code == 0, checked.output
    planned = invoke(["plan", str(recipe), "--json"], env)
    assert planned.exit_code == 0, planned.output
    plan = json.loads(planned.stdout)
    data = yaml.safe_load(recipe.read_text())
    # A tag may be `${VAR:-default}` (shared bases); these variables are unset here, so the default applies.
    tags = [data["base"]["tag"]] + ([data["app"]["tag"]] if "app" in data else [])
    assert [i["tag"] for i in plan["images"]] == [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", tag) for tag in tags]
    for image in plan["images"]:
        assert Path(image["containerfile"]).is_file()
    assert len(plan["checkpoints"]) == len(data.get("app", {}).get("checkpoints", []))


@pytest.mark.parametrize("recipe,variable", [("fish-speech-1.2-sft-cpu.yaml", "TORCH_CPU_WHEELS"),
                                             ("fish-speech-1.2-sft-cpu.yaml", "FISH_SPEECH_ZIP"),
                                             ("fish-speech-lora.yaml", "FISH_LORA_CKPT"),
                                             ("spark-tts-cpu.yaml", "SPARK_TTS_ZIP")])
def test_check_names_a_missing_user_file_variable(recipe: str, variable: str, user_files: dict[str, str]) -> None:
    env = {k: v for k, v in user_files.items() if k != variable}
    result = CliRunner().invoke(app, ["check", str(REPO / "recipes" / recipe)], env=env)
    assert result.exit_code == 1
    line = next(i for i, text in enumerate((REPO / "recipes" / recipe).read_text().splitlines(), 1)
                if "${" + variable in text)
    assert f"{recipe}:{line}:" in result.output and f"{variable} is not set" in result.output


def test_check_refuses_a_user_file_that_does_not_exist(user_files: dict[str, str], tmp_path: Path) -> None:
    env = {**user_files, "FISH_SPEECH_ZIP": str(tmp_path / "no-such.zip")}
    result = invoke(["check", str(REPO / "recipes" / "fish-speech-1.2-sft-cpu.yaml")], env)
    assert result.exit_code == 1 and "file not found" in result.output and "app.context[0].src" in result.output


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "recipes" / name).read_text())


def test_fish_speech_12_serves_the_bundled_engine_and_documents_tools_api() -> None:
    r = load("fish-speech-1.2-sft-cpu.yaml")
    (ckpt,) = r["app"]["checkpoints"]
    assert ckpt["repo"] == "fishaudio/fish-speech-1.2-sft" and ckpt["dest"] == "checkpoints/fish-speech-1.2-sft"
    assert set(ckpt["include"]) == FISH_12_FILES
    serve = r["app"]["serve"]
    command = serve["command"]
    assert command[:3] == ["python3", "-m", "imgbuild_runtime"] and serve["port"] == 8080
    assert command[command.index("--engine") + 1] == "fishspeech"
    assert command[command.index("--model") + 1] == ckpt["dest"]
    assert command[command.index("--port") + 1] == "8080" and command[command.index("--host") + 1] == "0.0.0.0"
    assert {"imgbuild-runtime", "ref_data"} <= {c["dest"] for c in r["app"]["context"]}
    assert (serve["health"]["method"], serve["health"]["path"]) == ("GET", "/health")
    # fish-speech's own server stays documented in the recipe, word for word, as the alternative command.
    text = (REPO / "recipes" / "fish-speech-1.2-sft-cpu.yaml").read_text()
    assert TOOLS_API_COMMAND in text.replace("\n#    ", " ").replace(",", "").replace("[", "")
    # CPU builds by default; TORCH_REQUIREMENT / TORCHAUDIO_REQUIREMENT may choose others.
    assert all(re.fullmatch(r"\$\{TORCH(AUDIO)?_REQUIREMENT:-torch(audio)?==[\d.]+\+cpu\}", p) for p in r["base"]["pip"])
    assert "libsox-dev" in r["base"]["packages"]


def test_lora_recipe_merges_at_build_and_serves_the_merged_model_with_the_14_decoder() -> None:
    r = load("fish-speech-lora.yaml")
    hub, local = r["app"]["checkpoints"]
    assert hub["repo"] == "fishaudio/fish-speech-1.4" and {"model.pth", "config.json"} <= set(hub["include"])
    assert local["path"] == "${FISH_LORA_CKPT}"
    # The Containerfile's merge stage reads the base from BASE_WEIGHT and the LoRA from LORA_DIR and writes
    # MERGED_WEIGHT, which the server loads.
    containerfile = (REPO / "recipes" / r["app"]["containerfile"]).resolve().read_text()
    defaults = dict(re.findall(r"^ARG (\w+)=(\S*)$", containerfile, re.MULTILINE))
    assert (defaults["BASE_WEIGHT"], defaults["LORA_DIR"]) == (hub["dest"], local["dest"])
    assert "tools/llama/merge_lora.py" in containerfile
    command = r["app"]["serve"]["command"]
    assert command[command.index("--llama-checkpoint-path") + 1] == defaults["MERGED_WEIGHT"]
    decoder = command[command.index("--decoder-checkpoint-path") + 1]
    assert decoder == f"{hub['dest']}/{hub['include'][-1]}" and "8x1024-21hz" in decoder


def test_spark_recipe_puts_the_model_where_the_server_reads_it() -> None:
    r = load("spark-tts-cpu.yaml")
    (ckpt,) = r["app"]["checkpoints"]
    assert ckpt["repo"] == "SparkAudio/Spark-TTS-0.5B"
    command = r["app"]["serve"]["command"]
    assert command[command.index("--model") + 1] == ckpt["dest"]
    dests = {c["dest"] for c in r["app"]["context"]}
    assert {"imgbuild-runtime", "ref_data"} <= dests
    # The runtime's own SparkTTS engine, and the runtime reads voices from ref_data/ by default.
    assert command[:3] == ["python3", "-m", "imgbuild_runtime"]
    assert command[command.index("--engine") + 1] == "sparktts"


def logical_lines(text: str) -> list[str]:
    """Containerfile instructions with continuation lines joined and comments dropped."""
    out: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        current += (" " if current else "") + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            out.append(current)
            current = ""
    assert not current, "a continuation line runs off the end of the file"
    return out


@pytest.mark.parametrize("containerfile", CONTAINERFILES, ids=lambda p: p.name)
def test_containerfiles_are_well_formed(containerfile: Path) -> None:
    lines = logical_lines(containerfile.read_text())
    words = [line.split(None, 1)[0].upper() for line in lines]
    assert set(words) <= INSTRUCTIONS, set(words) - INSTRUCTIONS
    assert words[words.index("FROM") - 1] == "ARG" and "BASE_IMAGE" in lines[words.index("FROM")]
    for line in lines:
        word, _, rest = line.partition(" ")
        if word.upper() in ("CMD", "ENTRYPOINT") and rest.startswith("["):
            assert all(isinstance(part, str) for part in json.loads(rest))
        if word.upper() == "COPY" and not rest.startswith("--from"):
            # Only what imgbuild's build context holds (imgbuild/build/context.py): app/ and imgbuild/.
            assert all(src.split("/")[0] in ("app", "imgbuild") for src in rest.split()[:-1]), line
