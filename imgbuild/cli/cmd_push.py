"""`imgbuild push` and `imgbuild kube`: from the discs to a site registry, and from the registry to a cluster."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from imgbuild.cli.cmd_restore import DirsArg, ManifestOpt
from imgbuild.cli.common import JsonOpt, SetOpt, VerboseOpt, app, cli_command, emit, progress_for
from imgbuild.fleet.kube import KubeOptions, kube_manifests
from imgbuild.fleet.push import PushOptions, PushResult, push_set
from imgbuild.foundation.atomicfile import write_atomic

RegistryOpt = Annotated[str, typer.Option(
    "--registry", help="The registry: HOST, HOST:PORT or HOST:PORT/PREFIX. Credentials come from `podman login` or "
                       "`docker login` (REGISTRY_AUTH_FILE, ~/.docker/config.json).", show_default=False)]
CaFileOpt = Annotated[Path | None, typer.Option("--ca-file", help="CA certificate (PEM) the registry's TLS "
                                                "certificate is checked against (default: the system's).")]
InsecureOpt = Annotated[bool, typer.Option("--insecure", help="Plain HTTP, no TLS (only on a trusted network).")]


def render_push(result: PushResult) -> str:
    lines = [f"set {result.set_id} ({result.name}) -> {result.registry}, {result.layer_format} layers, "
             f"{result.seconds:.1f} s"]
    for image in result.images:
        lines += [f"  {reference}@{image.digest}" for reference in image.references]
    lines.append(f"blobs: {result.blobs_sent} sent, {result.blobs_mounted} mounted, {result.blobs_present} "
                 f"already there; {result.bytes_read:,} bytes read from the volumes, {result.bytes_sent:,} sent")
    return "\n".join(lines)


@app.command("push")
@cli_command
def push(
    dirs: DirsArg,
    registry: RegistryOpt,
    tag: Annotated[list[str] | None, typer.Option(
        "--tag", help="NAME:TAG to push an image as, once per image in set order (default: the set's tags).")] = None,
    image: Annotated[list[str] | None, typer.Option("--image", help="Push only this image (tag, id, role).")] = None,
    layer_format: Annotated[str, typer.Option(
        "--layer-format", help="zstd: the discs' layers as they are (Podman, Docker Engine 23 and newer); gzip: "
                               "recompressed on the fly for older clients.")] = "zstd",
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    manifest: ManifestOpt = None,
    set_id: SetOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Push a set's images from its volumes into a registry, checking every part as it streams."""
    options = PushOptions(registry=registry, tags=tuple(tag or ()), images=tuple(image or ()),
                          layer_format=layer_format, ca_file=ca_file, insecure=insecure, catalog=manifest,
                          set_id=set_id)
    with progress_for(json_out, verbose) as progress:
        result = push_set(dirs, options, progress)
    emit(result, json_out, render_push)


@app.command("kube")
@cli_command
def kube(
    dirs: DirsArg,
    registry: RegistryOpt,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the manifests to this file "
                                             "(default: stdout).")] = None,
    replicas: Annotated[int, typer.Option("--replicas", help="Pods of the app.")] = 1,
    namespace: Annotated[str | None, typer.Option("--namespace", help="Namespace of the objects.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Name of the Deployment and Service.")] = None,
    image: Annotated[str | None, typer.Option("--image", help="Which image of the set (default: the app).")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="NAME:TAG the image was pushed as with push --tag.")] = None,
    cpu: Annotated[str, typer.Option("--cpu", help="CPU request,limit.")] = "1,2",
    memory: Annotated[str, typer.Option("--memory", help="Memory request,limit.")] = "1Gi,4Gi",
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    manifest: ManifestOpt = None,
    set_id: SetOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Kubernetes manifests (Deployment + Service) for a set's app, by digest from the registry it was pushed to."""
    cpu_request, _, cpu_limit = cpu.partition(",")
    memory_request, _, memory_limit = memory.partition(",")
    options = KubeOptions(registry=registry, namespace=namespace, replicas=replicas, name=name, image=image, tag=tag,
                          cpu_request=cpu_request, cpu_limit=cpu_limit or cpu_request,
                          memory_request=memory_request, memory_limit=memory_limit or memory_request,
                          ca_file=ca_file, insecure=insecure, catalog=manifest, set_id=set_id)
    result = kube_manifests(dirs, options)
    if out is not None:
        write_atomic(out, result.to_yaml().encode())
    if json_out:
        emit(result, True, lambda r: "")
    elif out is None:
        sys.stdout.write(result.to_yaml())
    else:
        typer.echo(f"{result.image}: Deployment and Service written to {out}", err=True)
