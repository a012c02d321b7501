"""Getting the Hermes image onto the host: pulled (optionally through a mirror), or uploaded
as a `docker save` archive and loaded (hosts that cannot reach Docker Hub)."""
from __future__ import annotations

import hashlib
import json
import shlex
import tarfile
from dataclasses import dataclass
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.operations import files

from hermes_infra.facts import DockerImageId
from hermes_infra.settings import ImageSettings


class ImageArchiveError(ValueError):
    pass


@dataclass(frozen=True)
class ArchiveImage:
    """What an image archive on the control machine holds."""

    path: Path
    ref: str | None
    image_id: str
    sha256: str


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inspect_archive(location: str) -> ArchiveImage:
    """Read ref and image ID from a `docker save` archive, or from an `image build` directory."""
    path = Path(location).expanduser()
    if path.is_dir():
        meta_path = path / "image.json"
        if not meta_path.exists():
            raise ImageArchiveError(f"image.archive {location!r} is a directory without image.json. "
                                    "Fix: point it at the directory `hermes-infra image build` printed")
        meta = json.loads(meta_path.read_text())
        archive = Path(meta["archive"])
        if not archive.is_absolute():
            archive = path / archive
        return ArchiveImage(archive, meta["ref"], meta["image_id"], meta.get("archive_sha256") or _file_sha256(archive))
    if not path.is_file():
        raise ImageArchiveError(f"image.archive {location!r} does not exist on this machine. "
                                "Fix: build it with `hermes-infra image build`, or give the right path")
    try:
        with tarfile.open(path, "r:*") as archive:
            manifest = json.load(archive.extractfile("manifest.json"))
    except (tarfile.TarError, KeyError, json.JSONDecodeError, TypeError) as error:
        raise ImageArchiveError(f"image.archive {location!r} is not a `docker save` archive ({error}). "
                                "Fix: create it with `docker save IMAGE | gzip > file.tar.gz`") from None
    config = manifest[0]["Config"]
    image_id = "sha256:" + Path(config).name.removesuffix(".json")
    tags = manifest[0].get("RepoTags") or [None]
    return ArchiveImage(path, tags[0], image_id, _file_sha256(path))


def remote_archive_path(settings: ImageSettings, archive: ArchiveImage) -> str:
    suffix = "".join(archive.path.suffixes[-2:]) or ".tar"
    return f"{settings.remote_cache_dir.rstrip('/')}/{archive.sha256[:32]}{suffix}"


def expected_image_id(settings: ImageSettings) -> str | None:
    """The ID the host must end up with, when known before deploying (archives only)."""
    if settings.source == "archive" and settings.archive:
        return inspect_archive(settings.archive).image_id
    return None


@operation()
def image_present(settings: ImageSettings):
    """Ensure the host has `settings.ref` (and, for archives, exactly the archive's image)."""
    current = host.get_fact(DockerImageId, ref=settings.ref)
    ref = shlex.quote(settings.ref)
    if settings.source == "pull":
        if current:
            host.noop(f"{settings.ref} is present ({current[:19]})")
            return
        if settings.pull_mirror:
            mirrored = shlex.quote(f"{settings.pull_mirror.rstrip('/')}/{settings.ref}")
            yield f"docker pull -q {mirrored} && docker tag {mirrored} {ref}"
        else:
            yield f"docker pull -q {ref}"
        return
    archive = inspect_archive(settings.archive)
    if current == archive.image_id:
        host.noop(f"{settings.ref} is the archive's image ({current[:19]})")
        return
    remote = remote_archive_path(settings, archive)
    yield f"install -d -m 0700 {shlex.quote(settings.remote_cache_dir)}"
    # files.put skips the upload when the host already has a file with this checksum.
    yield from files.put._inner(src=str(archive.path), dest=remote, mode="0600")
    yield f"docker load -q -i {shlex.quote(remote)}"
    if archive.ref and archive.ref != settings.ref:
        yield f"docker tag {shlex.quote(archive.ref)} {ref}"
    # Keep only the archive just loaded: images are hundreds of MB.
    yield (f"find {shlex.quote(settings.remote_cache_dir)} -maxdepth 1 -type f "
           f"! -name {shlex.quote(remote.rsplit('/', 1)[1])} -delete")


@deploy("Hermes image")
def image(settings: ImageSettings):
    image_present(name=f"Image {settings.ref} ({settings.source})", settings=settings)
