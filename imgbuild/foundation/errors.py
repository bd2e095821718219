"""The one exception tree of imgbuild.

Every error a user can cause or meet derives from ImgbuildError and carries the context needed to say
what went wrong and where. The CLI turns them into messages in one place (imgbuild.cli.common.report_error);
IMGBUILD_TRACEBACK=1 shows the traceback as well.
"""

from __future__ import annotations

from enum import StrEnum


class Remedy(StrEnum):
    """A choice the user can make to get past an error. The core names the choice, the command line the
    option that makes it (imgbuild.cli.common.REMEDY_HINTS): option names live in the CLI layer only."""

    CHOOSE_SET = "choose-set"  # the folders hold volumes of several sets
    CHOOSE_IMAGE = "choose-image"  # the set holds several images and none is the app
    MOVE_TAGS = "move-tags"  # the engine has the set's tags on other images
    ASK_FOR_VOLUMES = "ask-for-volumes"  # volumes needed are not among the folders given
    OTHER_OUT = "other-out"  # the output folder holds an earlier result
    GIVE_CATALOG = "give-catalog"  # no catalog folder where one was looked for
    GIVE_ENGINE_HOST = "give-engine-host"  # no engine found where one is looked for
    GIVE_MEDIA_SIZE = "give-media-size"  # a media profile not known: a size will do
    NAME_TAG = "name-tag"  # an image to push has no tag
    PUSH_FIRST = "push-first"  # the registry does not have the set's image yet
    GIVE_CA_FILE = "give-ca-file"  # the registry's certificate is not trusted here
    RELOCK = "relock"  # the checkpoints lock no longer says what is on disk
    OVERWRITE = "overwrite"  # files to write are there with other contents (an example written before)


class ImgbuildError(Exception):
    """Root of all imgbuild errors. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, remedy: Remedy | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.remedy = remedy

    def __str__(self) -> str:
        return self.message


class UsageError(ImgbuildError):
    """Wrong flags or arguments, found after parsing (exit code 2)."""

    exit_code = 2


class OptionError(UsageError):
    """An options value the core cannot use: ``option`` is the options field (the CLI names its flag)."""

    def __init__(self, option: str, reason: str, *, remedy: Remedy | None = None) -> None:
        super().__init__(f"{option}: {reason}", remedy=remedy)
        self.option = option
        self.reason = reason


class RecipeError(ImgbuildError):
    """A recipe that cannot be used: names the file, line, column and key path."""

    def __init__(
        self,
        message: str,
        *,
        file: str,
        line: int | None = None,
        column: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = file
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        text = f"{where}: {key + ': ' if key else ''}{message}"
        super().__init__(text, hint=hint)
        self.file = file
        self.line = line
        self.column = column
        self.key = key
        self.reason = message


class ExampleError(ImgbuildError):
    """An example recipe could not be written (`imgbuild example`): names the file in the way."""

    def __init__(self, message: str, *, path: str, hint: str | None = None, remedy: Remedy | None = None) -> None:
        super().__init__(message, hint=hint, remedy=remedy)
        self.path = path


class EngineError(ImgbuildError):
    """No engine could be reached, or the engine refused a request."""


class BuildFailed(ImgbuildError):
    """An image build failed: the failing step and the tail of its log."""

    def __init__(self, reason: str, *, step: str | None = None, log_tail: list[str] | None = None) -> None:
        super().__init__(f"build failed{' at ' + step if step else ''}: {reason}")
        self.reason = reason
        self.step = step
        self.log_tail = log_tail or []


class DownloadError(ImgbuildError):
    """A checkpoint could not be downloaded."""


class ChecksumMismatch(ImgbuildError):
    """A file's content does not match the hash it should have."""

    def __init__(self, path: str, expected: str, actual: str, *, what: str = "sha256") -> None:
        super().__init__(f"{path}: {what} mismatch: expected {expected}, got {actual}")
        self.path = path
        self.expected = expected
        self.actual = actual


class ArchiveError(ImgbuildError):
    """An archive cannot be written, or a set on disc cannot be read (bad or hostile manifest)."""


class ManifestError(ArchiveError):
    """A set manifest that is malformed, inconsistent or hostile: names the file and the field."""

    def __init__(self, source: str, field: str, reason: str, *, hint: str | None = None) -> None:
        super().__init__(f"{source}: {field}: {reason}", hint=hint)
        self.source = source
        self.field = field
        self.reason = reason


class FileFault(StrEnum):
    """Why a file on a volume cannot be used as one of its files."""

    MISSING = "missing"
    SYMLINK = "symlink"  # the file, or a folder on its way, is a symbolic link
    NOT_REGULAR = "not-regular"  # a device, fifo, socket or folder where a file should be
    NOT_FOLDER = "not-folder"  # a file where a folder on its way should be
    TOO_LARGE = "too-large"  # a metadata file above the size it may have
    UNREADABLE = "unreadable"  # an I/O error (a scratched disc)


class VolumeFileError(ArchiveError):
    """A file of a volume (a folder or an .iso image) that cannot be read as one: names the volume's location,
    the volume-relative path and the fault."""

    def __init__(self, volume: str, path: str, fault: FileFault, detail: str) -> None:
        super().__init__(f"{volume}/{path}: {detail}")
        self.volume = volume
        self.path = path
        self.fault = fault
        self.detail = detail


class LoadError(ImgbuildError):
    """Images could not be loaded or the service could not be started."""


class DiskFull(ImgbuildError):
    """The target file system has no room left."""

    def __init__(self, path: str, needed: int | None = None) -> None:
        extra = f" ({needed} more bytes needed)" if needed else ""
        super().__init__(f"no space left on the device holding {path}{extra}")
        self.path = path
        self.needed = needed


class SbomError(ImgbuildError):
    """What is inside an image could not be listed (imgbuild.build.sbom)."""

    def __init__(self, image: str, reason: str) -> None:
        super().__init__(f"{image}: cannot list what is inside: {reason}",
                         hint="imgbuild reads an image's package lists with the image's own python3 (on its PATH)")
        self.image = image
        self.reason = reason


class ConstraintsError(ImgbuildError):
    """A constraints source (`build --constraints`) that cannot be used: names the file or image and line."""

    def __init__(self, source: str, reason: str, *, line: int | None = None, hint: str | None = None) -> None:
        super().__init__(f"constraints {source}: {reason}", hint=hint)
        self.source = source
        self.line = line
