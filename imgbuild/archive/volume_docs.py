"""The human- and shell-readable files of every volume: README.txt (English and Chinese) and restore.sh.

Both must work twenty years from now without imgbuild, so they say everything plainly: which discs belong
together, how to check them with `sha256sum -c`, and how to rebuild the images with sh, cat, zstd, tar and
podman or docker. restore.sh carries the list of parts of every layer, so it needs no JSON parser.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from imgbuild.parity.volumes import readme_parity_section
from imgbuild.setformat import layout
from imgbuild.setformat.manifest import Image, Layer
from imgbuild.setformat.volume_files import docker_manifest


@dataclass(frozen=True)
class SetFacts:
    """What README.txt and restore.sh say about a set (all known before they are written)."""

    set_id: str
    name: str
    created: str
    tool_version: str
    volume_count: int
    images: list[Image]
    layers: list[Layer]
    compression_long: bool
    parity_volumes: int = 0
    contents: tuple[str, ...] = ()  # per image, imgbuild.build.sbom.Contents.summary_lines() (format 3)


def _image_lines(facts: SetFacts) -> str:
    return "\n".join(f"  {', '.join(image.tags) or '(untagged)'}\n    id {image.id}" for image in facts.images)


def _contents_section(facts: SetFacts) -> str:
    if not facts.contents:
        return ""
    return ("\nWhat is inside (the full list of each image, CycloneDX JSON: sbom/imageNN.cdx.json;\n"
            "`imgbuild inspect VOLUME_FOLDER` prints it):\n\n" + "\n\n".join(facts.contents) + "\n")


def _layer_lines(facts: SetFacts) -> str:
    lines = []
    for layer in facts.layers:
        lines.append(f"  {layout.layer_name(layer.number)}  {layer.size} bytes  {layer.diff_id}")
        for part in layer.parts:
            lines.append(f"      {layout.volume_folder(facts.set_id, part.volume)}/{part.path}")
    return "\n".join(lines)


def _manual_steps(facts: SetFacts, or_docker: str) -> str:
    """The shell lines of a restore by hand, the same in both languages of README.txt: pasted as written
    into sh or bash, they unpack into a new temporary folder, check every unpacked file's sha256 and only
    then load (``or_docker``: the comment after the load line)."""
    s = facts.set_id
    zstd_flag = " --long=27" if facts.compression_long else ""
    sums = [f"      '{_sha(docker_manifest(facts.images, facts.layers))}  manifest.json' \\"]
    sums += [f"      '{image.config.sha256}  {layout.config_name(image.number)}' \\" for image in facts.images]
    sums += [f"      '{layer.diff_id.removeprefix('sha256:')}  {layout.layer_name(layer.number)}' \\"
             for layer in facts.layers]
    checks = "\n".join(sums)
    return f'''    d=$(mktemp -d /tmp/imgbuild-restore.XXXXXX)
    cp {s}-vol001/images/* "$d"/
    for first in {s}-vol*/blobs/layer*.tar.zst.part001; do
        name=$(basename "$first" .zst.part001)
        cat {s}-vol*/blobs/"$name".zst.part* | zstd -dc{zstd_flag} > "$d/$name"
    done
    printf '%s\\n' \\
{checks}
      | (cd "$d" && sha256sum -c) \\
      && tar -C "$d" -cf - . | podman load        # {or_docker}
    rm -rf "$d"
'''


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def readme(facts: SetFacts, number: int) -> bytes:
    s, n, k = facts.set_id, facts.volume_count, number
    text = f"""\
imgbuild archive set {s}  --  volume {k} of {n}
{'=' * 60}

This disc is volume {k} of {n} of an archive made by imgbuild {facts.tool_version} on {facts.created}.
Set name: {facts.name}. It holds these container images (OCI/Docker images):

{_image_lines(facts)}
{_contents_section(facts)}
All {n} volumes are needed to restore the images. Each volume is a folder named {s}-volNNN
(this one: {layout.volume_folder(s, k)}). The format is described in FORMAT.md on this disc
(format imgbuild-set, version {layout.FORMAT_VERSION}); imgbuild-set.json on every disc describes this set.

1. Check this disc
------------------
    cd {layout.volume_folder(s, k)}          (the disc's mount point)
    sha256sum -c SHA256SUMS

Every line must say OK. SHA256SUMS covers every other file on this disc.

2. Restore with imgbuild
------------------------
    imgbuild verify VOLUME_FOLDER...                  check every volume
    imgbuild load VOLUME_FOLDER...                    load the images into podman or docker
    imgbuild load-and-run VOLUME_FOLDER...            load, then start the service and print its URL

3. Restore WITHOUT imgbuild (needs only sh, cat, zstd, tar, head, sha256sum and podman or docker)
-------------------------------------------------------------------------------------------------
Copy (or mount) all {n} volumes as folders side by side, keeping their names, then either run

    sh {layout.volume_folder(s, 1)}/{layout.RESTORE_NAME}          (add --engine docker for Docker)

or do by hand what it does (needs free space for the uncompressed layers; every line must say OK):

{_manual_steps(facts, "or: docker load")}
Each layer is one zstd stream cut into parts; join its parts in order (part001, part002, ...), then
decompress. The layers and their parts:

{_layer_lines(facts)}

The loaded images get the ids listed above (an image id is the sha256 of its config file).


imgbuild 归档集 {s}  --  第 {k} 卷，共 {n} 卷
{'=' * 60}

本光盘是 imgbuild {facts.tool_version} 于 {facts.created} 制作的归档集的第 {k} 卷（共 {n} 卷）。
归档集名称：{facts.name}。其中包含以下容器镜像（OCI/Docker 镜像）：

{_image_lines(facts)}
{"每个镜像的内容清单（SBOM，CycloneDX JSON）：sbom/imageNN.cdx.json；摘要见上文英文部分。" + chr(10) if facts.contents else ""}
恢复镜像需要全部 {n} 卷。每一卷是一个名为 {s}-volNNN 的文件夹（本卷：{layout.volume_folder(s, k)}）。
格式说明见本光盘上的 FORMAT.md（格式 imgbuild-set，版本 {layout.FORMAT_VERSION}）；每张光盘上的
imgbuild-set.json 描述了整个归档集。

1. 校验本光盘
-------------
    cd {layout.volume_folder(s, k)}          （光盘的挂载点）
    sha256sum -c SHA256SUMS

每一行都必须显示 OK。SHA256SUMS 覆盖本光盘上的所有其他文件。

2. 使用 imgbuild 恢复
---------------------
    imgbuild verify 卷文件夹...                 校验所有卷
    imgbuild load 卷文件夹...                   把镜像导入 podman 或 docker
    imgbuild load-and-run 卷文件夹...           导入后启动服务并显示其网址

3. 不使用 imgbuild 恢复（只需要 sh、cat、zstd、tar、head、sha256sum 以及 podman 或 docker）
------------------------------------------------------------------------------------------
把全部 {n} 卷复制（或挂载）为同一目录下的文件夹，保持原名，然后运行

    sh {layout.volume_folder(s, 1)}/{layout.RESTORE_NAME}          （使用 Docker 时加 --engine docker）

或者手工执行它所做的步骤（需要足够的空间存放解压后的镜像层）：

{_manual_steps(facts, "或：docker load")}
每个镜像层是一个 zstd 数据流，被切分成若干部分；按顺序（part001、part002……）拼接后再解压。
镜像层及其各部分见上文英文部分的列表。导入后的镜像 ID 与上面列出的一致（镜像 ID 是其配置文件的 sha256）。
"""
    if facts.parity_volumes:
        text += readme_parity_section(s, n, facts.parity_volumes)
    return text.encode("utf-8")


_RESTORE_HEAD = r"""#!/bin/sh
# Restore the container images of imgbuild set @SET_ID@ WITHOUT imgbuild.
# Needs only: sh, cat, zstd, tar, head, and podman or docker (sha256sum, when present, checks each file).
#
# Usage: sh restore.sh [--engine podman|docker|"COMMAND ..."] [--tmp DIR] [VOLUME_FOLDER...]
#   VOLUME_FOLDER  folders (or mount points) of the volumes; default: the folder of this script and the
#                  folders named @SET_ID@-vol* beside it.
#   --engine       the command that loads images (default: podman if installed, else docker)
#   --tmp DIR      where the layers are unpacked (needs @TOTAL@ bytes free; default $TMPDIR or /tmp)
set -eu

SET_ID=@SET_ID@
engine=""
tmpbase=${TMPDIR:-/tmp}
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "restore.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --engine) [ $# -ge 2 ] || die "--engine needs a value"; engine=$2; shift 2 ;;
        --tmp) [ $# -ge 2 ] || die "--tmp needs a value"; tmpbase=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) break ;;
    esac
done

here=$(cd "$(dirname "$0")" && pwd)
if [ $# -eq 0 ]; then
    set -- "$here"
    for d in "$here"/../"$SET_ID"-vol*; do [ -d "$d" ] && set -- "$@" "$d"; done
fi
DIRS=$(for d in "$@"; do printf '%s\n' "$d"; done)

for tool in cat zstd tar head; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is needed but not installed"
done
if [ -z "$engine" ]; then
    if command -v podman >/dev/null 2>&1; then engine=podman
    elif command -v docker >/dev/null 2>&1; then engine=docker
    else die "neither podman nor docker is installed"; fi
fi

# find_file PATH VOLUME: print where a volume-relative file is among the folders given.
find_file() {
    found=$(printf '%s\n' "$DIRS" | while IFS= read -r d; do
        if [ -f "$d/$1" ]; then printf '%s\n' "$d/$1"; break; fi
    done)
    [ -n "$found" ] || die "$1 (on volume $2, folder ${SET_ID}-vol$(printf %03d "$2")) was not found in: $(printf '%s ' $DIRS)"
    printf '%s\n' "$found"
}

tmp=$(mktemp -d "$tmpbase/imgbuild-restore.XXXXXX") || die "cannot create a folder in $tmpbase"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

# check NAME SIZE SHA256: the file $tmp/NAME has that size and (with sha256sum) that sha256.
check() {
    got=$(wc -c < "$tmp/$1" | tr -d ' ')
    [ "$got" = "$2" ] || die "$1 has $got bytes, expected $2"
    if command -v sha256sum >/dev/null 2>&1; then
        sum=$(sha256sum "$tmp/$1" | cut -d' ' -f1)
        [ "$sum" = "$3" ] || die "$1 has sha256 $sum, expected $3"
    fi
}

# small PATH NAME SIZE SHA256: copy a volume-relative file of volume 1 to $tmp/NAME and check it.
small() {
    f=$(find_file "$1" 1); cp "$f" "$tmp/$2"; check "$2" "$3" "$4"
}

# layer NAME SIZE DIFF_ID PATH:VOLUME...: join the parts of one layer and decompress them, stopping as
# soon as the output is larger than SIZE.
layer() {
    name=$1; size=$2; diff=$3; shift 3
    : > "$tmp/parts.list"
    for spec in "$@"; do
        find_file "${spec%:*}" "${spec##*:}" >> "$tmp/parts.list"
    done
    echo "restore.sh: $name ($size bytes) from $# part(s)" >&2
    { while IFS= read -r f; do cat "$f"; done < "$tmp/parts.list" | zstd -dc @ZSTD_FLAGS@
      echo $? > "$tmp/zstd.status"; } | head -c $((size + 1)) > "$tmp/$name"
    got=$(wc -c < "$tmp/$name" | tr -d ' ')
    [ "$got" -le "$size" ] || die "$name decompresses to more than $size bytes (stopped there)"
    [ "$(cat "$tmp/zstd.status")" = 0 ] || die "decompressing $name failed"
    check "$name" "$size" "${diff#sha256:}"
}

# image REF ID: after the load, REF must be the set's image ID (the sha256 of its config). Docker's containerd
# image store names an image by its manifest digest instead: there the id cannot be compared (say so).
bad=0
image() {
    ref=$1; want=${2#sha256:}
    if ! got=$($engine image inspect --format '{{.Id}}' "$ref" 2>/dev/null); then
        echo "restore.sh: $ref is not in the engine after the load" >&2; bad=1; return 0
    fi
    [ "${got#sha256:}" = "$want" ] && return 0
    if $engine info --format '{{json .DriverStatus}}' 2>/dev/null | grep -q containerd.snapshotter; then
        echo "restore.sh: $ref is ${got#sha256:} in this image store (a manifest digest); not compared" >&2
        return 0
    fi
    echo "restore.sh: $ref is image ${got#sha256:}, expected $want" >&2; bad=1
}

"""

_RESTORE_TAIL = r"""
echo "restore.sh: loading into $engine" >&2
# shellcheck disable=SC2086  # $engine may be a command with arguments
tar -C "$tmp" -cf - @MEMBERS@ | $engine load
@IMAGES@
[ "$bad" = 0 ] || die "the engine's images are not the set's (see above)"
echo "restore.sh: done; the images have these ids:" >&2
@IDS@
"""


def restore_script(facts: SetFacts) -> bytes:
    total = sum(layer.size for layer in facts.layers)
    head = (_RESTORE_HEAD.replace("@SET_ID@", facts.set_id).replace("@TOTAL@", str(total))
            .replace("@ZSTD_FLAGS@", "--long=27" if facts.compression_long else ""))
    lines = []
    for image in facts.images:
        lines.append(f"small {layout.config_path(image.number)} {layout.config_name(image.number)} "
                     f"{image.config.size} {image.config.sha256}")
    listing = docker_manifest(facts.images, facts.layers)
    lines.append(f"small {layout.DOCKER_MANIFEST_PATH} manifest.json {len(listing)} {_sha(listing)}")
    for layer in facts.layers:
        specs = " ".join(f"{part.path}:{part.volume}" for part in layer.parts)
        lines.append(f"layer {layout.layer_name(layer.number)} {layer.size} {layer.diff_id} {specs}")
    members = ["manifest.json"] + [layout.config_name(i.number) for i in facts.images]
    members += [layout.layer_name(layer.number) for layer in facts.layers]
    ids = "\n".join(f"echo '  {image.id}  {' '.join(image.tags)}' >&2" for image in facts.images)
    checks = "\n".join(f"image {image.tags[0] if image.tags else image.id} {image.id}" for image in facts.images)
    tail = _RESTORE_TAIL.replace("@MEMBERS@", " ".join(members)).replace("@IDS@", ids).replace("@IMAGES@", checks)
    return (head + "\n".join(lines) + "\n" + tail).encode()
