"""Image identity that survives both Docker image stores (pure Python, no pyinfra).

Why not `.Id`: on the classic store (graphdrivers such as overlay2) `docker image inspect
--format '{{.Id}}'` is the config digest, the same value a `docker save` archive names its
config by. On the containerd image store (the default of fresh Docker 29+ installs) `.Id` is
the digest of the image's *target*: its OCI index / manifest list for a pulled multi-platform
image, its manifest for a `docker load`ed one (moby `daemon/containerd/image_inspect.go`:
`ID: target.Digest.String()`). It never equals the archive's config digest, so a deploy that
compares the two reloads the image every time.

What is stable on both stores is the image config itself, which `docker image inspect`
shows on both: `RootFS.Layers` (the diff IDs: sha256 of each *uncompressed* layer tar, in
order) and `Architecture` / `Variant` / `Os`. `same_image()` compares exactly that.
Two images with the same diff IDs and platform have the same filesystem; they can still
differ in config-only settings (Env, Entrypoint, labels). Where the config digest is known
on both sides (classic store), compare `config_digest` too for an exact match.

Architectures are normalized like containerd's `platforms.Normalize` (`x86_64` -> `amd64`,
`aarch64` -> `arm64`, `arm64/v8` -> `arm64`, `armhf` -> `arm/v7`, `armel` -> `arm/v6`): the
variant is kept only where it matters (`arm/v7`, `arm64/v9`).
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ImageArchiveFormatError",
    "ImageIdentity",
    "architecture_mismatch",
    "host_architecture",
    "identity_from_archive",
    "identity_from_inspect",
    "normalize_architecture",
    "same_image",
]

# Blobs larger than this are layers (or not JSON anyway); configs and manifests are far smaller.
_MAX_JSON_BLOB = 8 << 20

_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
_MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}
# Graphdrivers of the classic store (there, `.Id` is the config digest).
_GRAPHDRIVERS = {"overlay2", "overlay", "aufs", "devicemapper", "vfs", "btrfs", "zfs", "fuse-overlayfs", "windowsfilter"}
# containerd snapshotters as `docker image inspect` names them (`.GraphDriver.Name`, API < 1.52).
_SNAPSHOTTERS = {"overlayfs", "native", "stargz", "nydus", "soci"}


class ImageArchiveFormatError(ValueError):
    """The file is not a `docker save` archive this module understands."""


@dataclass(frozen=True)
class ImageIdentity:
    """What identifies an image's content and platform on either image store."""

    layers: tuple[str, ...]      # RootFS diff IDs ("sha256:..."), in order
    architecture: str            # Docker/OCI arch name, normalized: amd64, arm64, arm/v7, ...
    os: str                      # "linux"
    config_digest: str | None    # "sha256:..." of the config JSON, when known (archive; classic-store .Id)
    ref: str | None = field(default=None, compare=False)  # a name for messages: RepoTags[0], archive tag

    @property
    def platform(self) -> str:
        return f"{self.os or 'linux'}/{self.architecture}"


# --- architectures -------------------------------------------------------------------------

_ARCH_ALIASES = {
    # uname -m
    "x86_64": "amd64", "x86-64": "amd64", "amd64": "amd64",
    "i386": "386", "i486": "386", "i586": "386", "i686": "386", "x86": "386", "386": "386",
    "aarch64": "arm64", "arm64": "arm64", "aarch64_be": "arm64be",
    "armv5l": "arm/v5", "armv5tel": "arm/v5", "armv5tejl": "arm/v5",
    "armv6l": "arm/v6", "armv7l": "arm/v7", "armv7": "arm/v7", "armv8l": "arm/v8",
    "ppc64le": "ppc64le", "ppc64": "ppc64", "s390x": "s390x", "riscv64": "riscv64",
    "mips64": "mips64", "mips64el": "mips64le", "mips64le": "mips64le", "loongarch64": "loong64",
    # dpkg --print-architecture
    "armhf": "arm/v7", "armel": "arm/v6", "arm": "arm/v7",
    "ppc64el": "ppc64le", "loong64": "loong64",
}


def normalize_architecture(architecture: str, variant: str | None = None) -> str:
    """`Architecture` + `Variant` of an image config, as containerd normalizes them."""
    arch = (architecture or "").strip().lower()
    var = (variant or "").strip().lower()
    if "/" in arch and not var:
        arch, var = arch.split("/", 1)
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64" if var in ("", "v1") else f"amd64/{var}"
    if arch in ("i386", "386"):
        return "386"
    if arch in ("aarch64", "arm64"):
        if var in ("", "8", "v8", "v8.0"):
            return "arm64"
        return "arm64/v9" if var in ("9", "9.0", "v9.0", "v9") else f"arm64/{var}"
    if arch == "armhf":
        return "arm/v7"
    if arch == "armel":
        return "arm/v6"
    if arch == "arm":
        if var in ("", "7", "v7"):
            return "arm/v7"
        return f"arm/v{var}" if var in ("5", "6", "8") else f"arm/{var}"
    base = _ARCH_ALIASES.get(arch, arch)
    return f"{base}/{var}" if var else base


def host_architecture(uname_m_or_dpkg: str) -> str:
    """Docker's name for a host's architecture, from `uname -m` or `dpkg --print-architecture`.

    x86_64/amd64 -> amd64, aarch64/arm64 -> arm64, armv7l/armhf -> arm/v7, armv6l -> arm/v6,
    armel -> arm/v6 (containerd's mapping), i686/i386 -> 386, ppc64el -> ppc64le.
    """
    words = (uname_m_or_dpkg or "").split()
    value = words[0].lower() if words else ""
    if not value:
        raise ValueError("empty architecture (expected `uname -m` or `dpkg --print-architecture` output)")
    return normalize_architecture(_ARCH_ALIASES.get(value, value))


def _base_and_variant(arch: str) -> tuple[str, str]:
    base, _, variant = normalize_architecture(arch).partition("/")
    return base, variant


def _runs_on(image_arch: str, host_arch: str) -> bool:
    """Whether an image built for `image_arch` runs natively on a `host_arch` machine."""
    image_base, image_variant = _base_and_variant(image_arch)
    host_base, host_variant = _base_and_variant(host_arch)
    if image_base != host_base:
        return False
    if image_base == "arm" and image_variant and host_variant:
        # An ARMv7 CPU runs v5/v6/v7 code; a v6 CPU does not run v7 code.
        return image_variant <= host_variant
    # Other variants (amd64/v3, arm64/v9) are CPU feature levels `uname -m` cannot tell: assume yes.
    return True


def architecture_mismatch(image: ImageIdentity, host_arch: str, ref: str | None = None) -> str | None:
    """An operator-facing message when `image` cannot run on a `host_arch` host, else None.

    `host_arch` may be raw `uname -m` or `dpkg --print-architecture` output.
    """
    host = host_architecture(host_arch)
    if _runs_on(image.architecture, host):
        return None
    name = ref or image.ref or "the image"
    host_platform = f"linux/{host}"
    return (
        f"image {name} is built for {image.platform}, but this host is {host_platform}: "
        f"its containers would fail with 'exec format error'. "
        f"Fix: build or pull the image for {host_platform} - e.g. "
        f"`docker buildx build --platform {host_platform} ...`, `docker pull --platform {host_platform} {name}`, "
        f"or run `hermes-infra image build` on a {host} machine - and point the image settings at it."
    )


# --- docker image inspect -------------------------------------------------------------------

def _first(data: Any) -> Mapping[str, Any] | None:
    if isinstance(data, Mapping):
        return data or None
    if isinstance(data, (list, tuple)):
        for item in data:
            if isinstance(item, Mapping) and item:
                return item
    return None


def _inspect_config_digest(info: Mapping[str, Any]) -> str | None:
    """`.Id` when it is the config digest (classic store); None on the containerd store."""
    image_id = info.get("Id") or ""
    if not image_id.startswith("sha256:"):
        return None
    descriptor = info.get("Descriptor")
    if isinstance(descriptor, Mapping):
        # Only the containerd store returns the target descriptor; its digest is `.Id`.
        return None
    for digest_ref in info.get("RepoDigests") or ():
        if digest_ref.endswith("@" + image_id):
            return None  # `.Id` is a manifest / index digest
    driver = info.get("GraphDriver")
    name = driver.get("Name") if isinstance(driver, Mapping) else None
    if name in _SNAPSHOTTERS:
        return None
    if name in _GRAPHDRIVERS:
        return image_id
    return None


def identity_from_inspect(data: list | dict | None) -> ImageIdentity | None:
    """Identity of the image in `docker image inspect` JSON (the list, or one object).

    None when the image is absent (empty list, None, no RootFS layers).
    """
    info = _first(data)
    if info is None:
        return None
    rootfs = info.get("RootFS") or {}
    layers = rootfs.get("Layers") if isinstance(rootfs, Mapping) else None
    if not layers:
        return None
    tags = info.get("RepoTags") or []
    return ImageIdentity(
        layers=tuple(str(layer) for layer in layers),
        architecture=normalize_architecture(info.get("Architecture") or "", info.get("Variant")),
        os=(info.get("Os") or "").lower(),
        config_digest=_inspect_config_digest(info),
        ref=tags[0] if tags else None,
    )


def same_image(expected: ImageIdentity | None, actual: ImageIdentity | None) -> bool:
    """Same filesystem layers (diff IDs, in order) and the same architecture.

    When both sides know their config digest (archive vs classic store) those must match too.
    """
    if expected is None or actual is None:
        return False
    if tuple(expected.layers) != tuple(actual.layers):
        return False
    if normalize_architecture(expected.architecture) != normalize_architecture(actual.architecture):
        return False
    if expected.config_digest and actual.config_digest:
        return expected.config_digest == actual.config_digest
    return True


# --- docker save archives ---------------------------------------------------------------------

def _digest_path(digest: str) -> str:
    algorithm, _, encoded = (digest or "").partition(":")
    if not algorithm or not encoded or "/" in encoded or "/" in algorithm:
        raise ImageArchiveFormatError(f"invalid digest {digest!r}")
    return f"blobs/{algorithm}/{encoded}"


def _normalize_member(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _wanted(member: tarfile.TarInfo, name: str) -> bool:
    if not member.isfile() or member.size > _MAX_JSON_BLOB:
        return False
    if name in ("manifest.json", "index.json", "oci-layout", "repositories"):
        return True
    if name.startswith("blobs/") and name.count("/") == 2:
        return True
    # classic layout: "<config hex>.json" at the top level (not "<layer>/json")
    return "/" not in name and name.endswith(".json")


def _config_identity(config_bytes: bytes, where: str, ref: str | None) -> ImageIdentity:
    try:
        config = json.loads(config_bytes)
        diff_ids = config["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError) as error:
        raise ImageArchiveFormatError(f"{where}: the image config has no rootfs.diff_ids ({error})") from None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise ImageArchiveFormatError(f"{where}: the image config's rootfs.diff_ids is not a list of digests")
    return ImageIdentity(
        layers=tuple(diff_ids),
        architecture=normalize_architecture(config.get("architecture") or "", config.get("variant")),
        os=(config.get("os") or "").lower(),
        config_digest="sha256:" + hashlib.sha256(config_bytes).hexdigest(),
        ref=ref,
    )


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as error:
        raise ImageArchiveFormatError(f"{what} is not valid JSON ({error})") from None


class _Pending(Exception):
    """A member the resolution needs has not been read yet (it may come later in the tar)."""


def _need(files: Mapping[str, bytes], name: str) -> bytes:
    try:
        return files[name]
    except KeyError:
        raise _Pending(name) from None


def _from_manifest_json(files: Mapping[str, bytes], path: Path) -> ImageIdentity:
    manifest = _json(files["manifest.json"], f"{path}: manifest.json")
    if not isinstance(manifest, list) or not manifest or not all(isinstance(e, Mapping) for e in manifest):
        raise ImageArchiveFormatError(f"{path}: manifest.json does not list any image")
    if len(manifest) > 1:
        tags = [", ".join(entry.get("RepoTags") or ["<untagged>"]) for entry in manifest]
        raise ImageArchiveFormatError(f"{path} holds {len(manifest)} images ({'; '.join(tags)}); "
                                      "save exactly one image per archive")
    entry = manifest[0]
    config_name = entry.get("Config")
    if not isinstance(config_name, str) or not config_name:
        raise ImageArchiveFormatError(f"{path}: manifest.json has no Config entry")
    tags = entry.get("RepoTags") or [None]
    return _config_identity(_need(files, _normalize_member(config_name)), f"{path}: {config_name}", tags[0])


def _platform_of(descriptor: Mapping[str, Any]) -> str | None:
    platform = descriptor.get("platform")
    if not isinstance(platform, Mapping):
        return None
    return f"{platform.get('os', '')}/{normalize_architecture(platform.get('architecture', ''), platform.get('variant'))}"


def _is_attestation(descriptor: Mapping[str, Any]) -> bool:
    annotations = descriptor.get("annotations") or {}
    if annotations.get("vnd.docker.reference.type") == "attestation-manifest":
        return True
    platform = descriptor.get("platform") or {}
    return platform.get("architecture") == "unknown" and platform.get("os") == "unknown"


def _manifests(files: Mapping[str, bytes], descriptors: Iterable[Mapping[str, Any]], path: Path,
               depth: int = 0) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(descriptor, manifest) of every image manifest reachable and present in the archive."""
    if depth > 4:
        raise ImageArchiveFormatError(f"{path}: index nesting too deep")
    found = []
    for descriptor in descriptors:
        if not isinstance(descriptor, Mapping) or _is_attestation(descriptor):
            continue
        name = _digest_path(descriptor.get("digest", ""))
        if name not in files:
            # `docker save` of one platform of a multi-platform image omits the other platforms'
            # blobs; they may also simply come later in the tar.
            continue
        blob = _json(files[name], f"{path}: {name}")
        media_type = descriptor.get("mediaType") or blob.get("mediaType")
        if media_type in _INDEX_TYPES or "manifests" in blob:
            found += _manifests(files, blob.get("manifests") or [], path, depth + 1)
        elif media_type in _MANIFEST_TYPES or "config" in blob:
            found.append((descriptor, blob))
    return found


def _ref_from_annotations(annotations: Mapping[str, Any] | None) -> str | None:
    if not annotations:
        return None
    name = annotations.get("io.containerd.image.name")
    if isinstance(name, str) and name:
        for prefix in ("docker.io/library/", "docker.io/"):
            if name.startswith(prefix):
                return name[len(prefix):]
        return name
    return None


def _from_index_json(files: Mapping[str, bytes], path: Path, architecture: str | None) -> ImageIdentity:
    index = _json(files["index.json"], f"{path}: index.json")
    top = index.get("manifests") if isinstance(index, Mapping) else None
    if not isinstance(top, list) or not top:
        raise ImageArchiveFormatError(f"{path}: index.json lists no manifests")
    ref = next((r for r in (_ref_from_annotations(d.get("annotations")) for d in top if isinstance(d, Mapping)) if r),
               None)
    candidates = _manifests(files, top, path)
    if not candidates:
        raise _Pending("an image manifest")
    configs: dict[str, tuple[Mapping[str, Any], Mapping[str, Any]]] = {}
    for descriptor, manifest in candidates:
        config = manifest.get("config") or {}
        digest = config.get("digest") if isinstance(config, Mapping) else None
        if digest:
            configs.setdefault(digest, (descriptor, manifest))
    if not configs:
        raise ImageArchiveFormatError(f"{path}: the image manifest names no config")
    identities = [_config_identity(_need(files, _digest_path(digest)), f"{path}: {_digest_path(digest)}", ref)
                  for digest in configs]
    if architecture:
        wanted = normalize_architecture(architecture)
        identities = [i for i in identities if i.architecture == wanted] or identities
    if len({(i.layers, i.architecture) for i in identities}) > 1:
        platforms = ", ".join(sorted(i.platform for i in identities))
        raise ImageArchiveFormatError(f"{path} holds several platforms ({platforms}); save one platform "
                                      "(`docker save --platform linux/<arch>`) or pass architecture=")
    return identities[0]


def _resolve(files: Mapping[str, bytes], path: Path, architecture: str | None) -> ImageIdentity:
    if "manifest.json" in files:
        return _from_manifest_json(files, path)
    if "index.json" in files:
        return _from_index_json(files, path, architecture)
    raise _Pending("manifest.json or index.json")


def _archive_file(location: Path) -> Path:
    """The archive itself, or the archive an `hermes-infra image build` directory records."""
    if location.is_dir():
        meta = location / "image.json"
        if not meta.is_file():
            raise ImageArchiveFormatError(f"{location} is a directory without image.json")
        try:
            archive = Path(json.loads(meta.read_text())["archive"])
        except (ValueError, KeyError, TypeError) as error:
            raise ImageArchiveFormatError(f"{meta} names no archive ({error})") from None
        return archive if archive.is_absolute() else location / archive
    return location


def identity_from_archive(path: str | os.PathLike[str], *, architecture: str | None = None) -> ImageIdentity:
    """Identity of the image in a `docker save` archive (plain or gzip'd tar) on this machine.

    Understands the classic layout (`manifest.json` -> `<config>.json` with `rootfs.diff_ids`)
    and the OCI layout Docker 25+ writes (`index.json`, `oci-layout`, `blobs/sha256/...`; the
    `manifest.json` written beside them is used when present, `index.json` alone is enough).
    Reads the members in one forward pass and keeps only small ones (JSON); layers are skipped
    (seeked over in a plain tar) and the pass stops as soon as the identity is known.
    `architecture` picks one platform from an archive that holds several.
    Raises ImageArchiveFormatError for anything else.
    """
    location = Path(path).expanduser()
    archive = _archive_file(location)
    if not archive.is_file():
        raise ImageArchiveFormatError(f"{archive} does not exist or is not a file")
    files: dict[str, bytes] = {}
    pending = "manifest.json or index.json"
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            while True:
                member = tar.next()
                if member is None:
                    break
                name = _normalize_member(member.name)
                if not _wanted(member, name):
                    continue
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                if name.startswith("blobs/") and not data.lstrip()[:1] == b"{":
                    continue  # a small layer, not JSON
                files[name] = data
                if name in ("manifest.json", "index.json") or "manifest.json" in files or "index.json" in files:
                    try:
                        return _resolve(files, archive, architecture)
                    except _Pending as missing:
                        pending = str(missing)
    except tarfile.ReadError as error:
        raise ImageArchiveFormatError(f"{archive} is not a tar archive ({error}). "
                                      "Create it with `docker save IMAGE | gzip > file.tar.gz`") from None
    except (EOFError, zlib.error, tarfile.TarError) as error:
        raise ImageArchiveFormatError(f"{archive} is truncated or corrupt ({error})") from None
    except OSError as error:
        if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        raise ImageArchiveFormatError(f"{archive} is truncated or corrupt ({error})") from None
    if "manifest.json" not in files and "index.json" not in files:
        raise ImageArchiveFormatError(f"{archive} is a tar archive but not a `docker save` archive "
                                      "(no manifest.json or index.json)")
    raise ImageArchiveFormatError(f"{archive}: {pending} is missing from the archive")
