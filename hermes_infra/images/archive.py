"""Image archives on the control machine: what one holds (ref, checksum, layers), read without
pyinfra or the plan, so `validate` and the CLI's checks stay quick to start."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from hermes_infra.images import identity as imageid
from hermes_infra.host.hostenv import cache_dir


class ImageArchiveError(ValueError):
    pass


@dataclass(frozen=True)
class ArchiveImage:
    """What an image archive on the control machine holds."""

    path: Path
    ref: str | None
    sha256: str

    @property
    def identity(self) -> imageid.ImageIdentity:
        return archive_identity(self.path, self.sha256)


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
        if not archive.is_file():
            raise ImageArchiveError(f"image.archive {location!r}: its image.json names {archive}, which does not "
                                    "exist. Fix: rebuild with `hermes-infra image build --force`")
        return ArchiveImage(archive, meta["ref"], meta.get("archive_sha256") or _file_sha256(archive))
    if not path.is_file():
        raise ImageArchiveError(f"image.archive {location!r} does not exist on this machine. "
                                "Fix: build it with `hermes-infra image build`, or give the right path")
    sha256 = _file_sha256(path)
    return ArchiveImage(path, archive_identity(path, sha256).ref, sha256)


def archive_identity(path: Path, sha256: str) -> imageid.ImageIdentity:
    """Layers and architecture of an archive, cached by its checksum (reading a gzipped
    archive takes seconds; a deploy should not pay that when nothing changed)."""
    cache = cache_dir() / "image-identities" / f"{sha256}.json"
    try:
        data = json.loads(cache.read_text())
        return imageid.ImageIdentity(layers=tuple(data["layers"]), architecture=data["architecture"], os=data["os"],
                                     config_digest=data.get("config_digest"), ref=data.get("ref"))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        identity = imageid.identity_from_archive(path)
    except imageid.ImageArchiveFormatError as error:
        raise ImageArchiveError(f"image.archive {str(path)!r} is not a `docker save` archive ({error}). "
                                "Fix: create it with `docker save IMAGE | gzip > file.tar.gz`") from None
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"layers": list(identity.layers), "architecture": identity.architecture,
                                 "os": identity.os, "config_digest": identity.config_digest, "ref": identity.ref}))
    return identity
