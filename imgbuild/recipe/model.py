"""The recipe format, version imgbuild/v1, as pydantic models.

A recipe describes two images: a base layer (an OS with Python and the heavy libraries) and an app layer
(the model, its checkpoints, its voices and the HTTP server that serves it). Every model forbids unknown
keys, so a misspelled key is an error, not a silently ignored setting. `imgbuild schema` prints the JSON
Schema generated from these models for editor completion.

Loading (YAML with positions, ${VAR} interpolation, error messages) lives in imgbuild.recipe.loader.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

API_VERSION = "imgbuild/v1"


def _reference_lengths(value: str) -> str:
    """The engines' limits on an image reference: the name at most 255 characters, the tag at most 128."""
    name, _, tag = value.rpartition(":") if ":" in value.rsplit("/", 1)[-1] else (value, "", "")
    if len(name) > 255:
        raise ValueError(f"image name longer than 255 characters ({len(name)})")
    if len(tag) > 128:
        raise ValueError(f"image tag longer than 128 characters ({len(tag)})")
    return value


def _inside_app(value: str) -> str:
    """A dest is a relative path that stays inside the app folder."""
    parts = value.replace("\\", "/").split("/")
    if not value or value.startswith("/") or ".." in parts or "\0" in value:
        raise ValueError(f"dest must be a relative path inside the app folder, not {value[:80]!r}")
    return value


# A tag such as "localhost/demo-base:1" or "imgbuild/demo-app:latest".
ImageTag = Annotated[str, Field(min_length=1, max_length=400, pattern=r"^[a-z0-9][a-z0-9._/:@-]*$"),
                     AfterValidator(_reference_lengths)]
AppDest = Annotated[str, AfterValidator(_inside_app)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PipMirror(_Model):
    """Where pip finds packages, during the build and (as pip.conf) inside the image."""

    index_url: str | None = Field(None, description="pip's --index-url, e.g. a PyPI mirror's simple index.")
    extra_index_urls: list[str] = Field(default_factory=list, description="pip's --extra-index-url values.")
    trusted_hosts: list[str] = Field(default_factory=list, description="Hosts pip may reach without TLS checks.")
    find_links: list[str] = Field(
        default_factory=list,
        description="URLs or local folders of wheels (local folders are copied into the build context), "
        "e.g. a folder of CPU-only torch wheels.",
    )


class Mirrors(_Model):
    """Mirror settings. They reach a build only as build args and files in the build context."""

    apt: str | None = Field(
        None,
        description="Debian/Ubuntu archive URL written into the image's apt sources. "
        "Default: the first archive URL of this host's own apt sources.",
    )
    pip: PipMirror = Field(default_factory=PipMirror)
    huggingface: str | None = Field(
        None, description="Hugging Face Hub endpoint (a mirror). Default: HF_ENDPOINT, then the library's own."
    )
    registry: str | None = Field(
        None, description="Registry mirror or prefix put in front of image references in `from:`."
    )
    ca_certificates: list[str] = Field(
        default_factory=list,
        description="PEM files (paths relative to the recipe) trusted during the build and inside the image, "
        "for TLS-intercepting proxies.",
    )


class Bootstrap(_Model):
    """A root filesystem made by mmdebstrap from an apt mirror and imported: needs no registry."""

    suite: str = Field("bookworm", description="Debian suite or Ubuntu series.")
    variant: Literal["minbase", "essential", "apt", "required", "important", "standard"] = "minbase"
    include: list[str] = Field(default_factory=lambda: ["python3"], description="Packages put in the rootfs.")
    mirror: str | None = Field(None, description="Archive URL; default mirrors.apt, then the host's apt sources.")
    components: list[str] = Field(default_factory=lambda: ["main"])


class BaseLayer(_Model):
    tag: ImageTag
    from_: str | None = Field(None, alias="from", description="Image reference to start from (needs a registry).")
    bootstrap: Bootstrap | None = Field(None, description="Make the starting root filesystem with mmdebstrap.")
    containerfile: str | None = Field(
        None,
        description="Containerfile, relative to the recipe; default: imgbuild's Containerfiles/python-base.Containerfile.",
    )
    args: dict[str, str] = Field(default_factory=dict, description="Extra build args.")
    packages: list[str] = Field(default_factory=list, description="apt packages installed in the base.")
    pip: list[str] = Field(default_factory=list, description="pip requirements installed in the base.")

    @model_validator(mode="after")
    def _one_start(self) -> "BaseLayer":
        if (self.from_ is None) == (self.bootstrap is None):
            raise ValueError("give exactly one of `from` and `bootstrap`")
        return self


class ContextItem(_Model):
    """A local file or folder copied into the app layer's build context."""

    src: str = Field(description="File, folder or .zip, relative to the recipe.")
    dest: AppDest = Field(
        description="Path relative to the app folder: app/DEST in the build context, /opt/app/DEST in the image "
        "(with the default app Containerfile)."
    )
    extract: bool = Field(False, description="Extract a .zip (or .tar*) into dest instead of copying it.")
    strip_components: int = Field(0, ge=0, description="Leading path components dropped when extracting.")


class HubCheckpoint(_Model):
    """Files of a Hugging Face Hub repository, pinned by the lock file."""

    repo: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
    revision: str = "main"
    repo_type: Literal["model", "dataset", "space"] = "model"
    include: list[str] = Field(default_factory=list, description="fnmatch patterns; empty means all files.")
    exclude: list[str] = Field(default_factory=list)
    dest: AppDest = Field(description="Folder inside the app image, e.g. checkpoints/fish-speech-1.2-sft.")


class LocalCheckpoint(_Model):
    """A checkpoint folder or file on this machine, e.g. a LoRA-merged fish-speech checkpoint."""

    path: str = Field(description="File or folder, relative to the recipe.")
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    dest: AppDest


def _checkpoint_kind(value: Any) -> str | None:
    """`repo:` makes a Hub checkpoint, `path:` a local one; choosing here gives one clear error, not two."""
    if isinstance(value, (HubCheckpoint, LocalCheckpoint)):
        return "hub" if isinstance(value, HubCheckpoint) else "local"
    if isinstance(value, dict):
        return "local" if "path" in value and "repo" not in value else "hub"
    return None


Checkpoint = Annotated[
    Annotated[HubCheckpoint, Tag("hub")] | Annotated[LocalCheckpoint, Tag("local")],
    Discriminator(_checkpoint_kind, custom_error_type="checkpoint_kind",
                  custom_error_message="a checkpoint needs `repo` (Hugging Face) or `path` (local folder)"),
]


class HealthCheck(_Model):
    method: Literal["GET", "POST", "HEAD"] = "GET"
    path: str = Field("/health", pattern=r"^/")
    expect_status: int = 200
    timeout: float = Field(600, gt=0, description="Seconds to wait for the service to become healthy.")
    interval: float = Field(1, gt=0)


class Serve(_Model):
    port: int = Field(8080, ge=1, le=65535, description="Port the server listens on inside the container.")
    command: list[str] = Field(default_factory=list, description="Command; empty means the image's CMD.")
    health: HealthCheck = Field(default_factory=HealthCheck)
    env: dict[str, str] = Field(default_factory=dict)


class AppLayer(_Model):
    tag: ImageTag
    from_: str = Field("base", alias="from", description="`base` (this recipe's base layer) or an image reference.")
    containerfile: str | None = Field(
        None, description="Containerfile, relative to the recipe; default: imgbuild's Containerfiles/app.Containerfile."
    )
    args: dict[str, str] = Field(default_factory=dict)
    context: list[ContextItem] = Field(default_factory=list)
    checkpoints: list[Checkpoint] = Field(default_factory=list)
    serve: Serve = Field(default_factory=Serve)


class Metadata(_Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    version: str = "1"


class Recipe(_Model):
    api_version: Literal["imgbuild/v1"] = Field(alias="apiVersion")
    kind: Literal["Recipe"]
    metadata: Metadata
    mirrors: Mirrors = Field(default_factory=Mirrors)
    base: BaseLayer
    app: AppLayer | None = None
