"""Tests of hermes_infra.images.identity: image identity across Docker's classic and containerd stores.

Recorded `docker image inspect` output lives in tests/unit/fixtures/ (sources in its README);
`docker save` archives are built here, small, in both layouts Docker writes.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from hermes_infra.host import hostenv
from hermes_infra.images.identity import (
    ImageArchiveFormatError,
    ImageIdentity,
    architecture_mismatch,
    host_architecture,
    identity_from_archive,
    identity_from_inspect,
    normalize_architecture,
    same_image,
)

FIXTURES = Path(__file__).parent / "fixtures"
HELLO_2023_LAYER = "sha256:ac28800ec8bb38d5c35b49d45a6ac4777544941199075dff8c4eb63e093aa81e"
HELLO_2023_CONFIG = "sha256:d2c94e258dcb3c5ac2798d32e1249e42ef01cba4841c2234249495f87264ac5a"
HELLO_2025_LAYER = "sha256:53d204b3dc5ddbc129df4ce71996b8168711e211274c785de5e0d4eb68ec3851"
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def recorded(name: str) -> list:
    return json.loads((FIXTURES / name).read_text())


# --- recorded inspect output of both stores ---------------------------------------------------

def test_classic_store_inspect_id_is_the_config_digest():
    identity = identity_from_inspect(recorded("docker-inspect-classic-overlay2-hello-world.json"))
    assert identity == ImageIdentity(layers=(HELLO_2023_LAYER,), architecture="amd64", os="linux",
                                     config_digest=HELLO_2023_CONFIG)
    assert identity.ref == "hello-world:latest"


@pytest.mark.parametrize("fixture", ["docker-inspect-containerd-hello-world.json",
                                     "docker-inspect-containerd-docker29-hello-world.json"])
def test_containerd_store_inspect_id_is_not_taken_for_the_config_digest(fixture):
    data = recorded(fixture)
    identity = identity_from_inspect(data)
    assert identity is not None and identity.config_digest is None
    assert data[0]["Id"] in data[0]["RepoDigests"][0]  # .Id is the index digest there


def test_same_image_on_both_stores_has_the_same_identity():
    classic = identity_from_inspect(recorded("docker-inspect-classic-overlay2-hello-world.json"))
    containerd = identity_from_inspect(recorded("docker-inspect-containerd-hello-world.json"))
    classic_id = recorded("docker-inspect-classic-overlay2-hello-world.json")[0]["Id"]
    containerd_id = recorded("docker-inspect-containerd-hello-world.json")[0]["Id"]
    assert classic_id != containerd_id  # what the old `.Id` comparison tripped over
    assert same_image(classic, containerd) and same_image(containerd, classic)
    assert (classic.layers, classic.architecture, classic.os) == (containerd.layers, containerd.architecture,
                                                                   containerd.os)


def test_one_different_layer_is_another_image():
    containerd = recorded("docker-inspect-containerd-hello-world.json")
    containerd[0]["RootFS"]["Layers"] = [HELLO_2023_LAYER, "sha256:" + "0" * 64]
    classic = identity_from_inspect(recorded("docker-inspect-classic-overlay2-hello-world.json"))
    assert not same_image(classic, identity_from_inspect(containerd))
    changed = recorded("docker-inspect-containerd-docker29-hello-world.json")
    changed[0]["RootFS"]["Layers"] = ["sha256:" + "1" * 64]
    assert not same_image(identity_from_inspect(recorded("docker-inspect-containerd-docker29-hello-world.json")),
                          identity_from_inspect(changed))


def test_other_architecture_is_another_image():
    amd64 = recorded("docker-inspect-containerd-docker29-hello-world.json")
    arm64 = recorded("docker-inspect-containerd-docker29-hello-world.json")
    arm64[0]["Architecture"], arm64[0]["Variant"] = "arm64", "v8"
    assert identity_from_inspect(arm64).architecture == "arm64"
    assert not same_image(identity_from_inspect(amd64), identity_from_inspect(arm64))


def test_inspect_input_shapes():
    data = recorded("docker-inspect-containerd-docker29-hello-world.json")
    assert identity_from_inspect(data[0]) == identity_from_inspect(data)
    assert identity_from_inspect([]) is None
    assert identity_from_inspect({}) is None
    assert identity_from_inspect(None) is None
    assert identity_from_inspect([{"Id": "sha256:abc", "RootFS": {"Type": "layers"}}]) is None
    assert not same_image(identity_from_inspect(data), None)


def test_config_digests_decide_when_both_sides_know_them():
    classic = identity_from_inspect(recorded("docker-inspect-classic-overlay2-hello-world.json"))
    rebuilt = ImageIdentity(classic.layers, classic.architecture, classic.os, "sha256:" + "2" * 64)
    assert not same_image(classic, rebuilt)  # same files, other config (Env, labels, ...)
    assert same_image(classic, ImageIdentity(classic.layers, "amd64", "linux", None))


# --- docker save archives ------------------------------------------------------------------------

def layer_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_json(diff_ids: list[str], arch: str = "amd64", variant: str | None = None) -> bytes:
    config = {"architecture": arch, "os": "linux", "created": "2025-01-01T00:00:00Z",
              "config": {"Cmd": ["/hello"]}, "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "history": [{"created_by": "COPY hello /"}]}
    if variant:
        config["variant"] = variant
    return json.dumps(config, separators=(",", ":")).encode()


def write_tar(path: Path, members: list[tuple[str, bytes]], compress: bool = False) -> Path:
    raw = path.open("wb")
    out = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if compress else raw
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    if compress:
        out.close()
    raw.close()
    return path


def classic_archive(path: Path, layers: list[bytes], arch: str = "amd64", ref: str = "hermes-agent:1.0-local",
                    compress: bool = False, config: bytes | None = None) -> tuple[Path, bytes]:
    """The pre-25 `docker save` layout: <layer id>/{VERSION,json,layer.tar}, <config>.json, manifest.json."""
    config = config or config_json([sha(layer) for layer in layers], arch)
    members, names = [], []
    for layer in layers:
        layer_id = hashlib.sha256(layer).hexdigest()
        members += [(f"{layer_id}/VERSION", b"1.0"), (f"{layer_id}/json", b'{"id":"%s"}' % layer_id.encode()),
                    (f"{layer_id}/layer.tar", layer)]
        names.append(f"{layer_id}/layer.tar")
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    members.append((config_name, config))
    members.append(("manifest.json", json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": names}]).encode()))
    members.append(("repositories", json.dumps({ref.split(":")[0]: {ref.split(":")[1]: "x"}}).encode()))
    return write_tar(path, members, compress), config


def oci_archive(path: Path, images: list[tuple[list[bytes], str]], *, with_manifest_json: bool = True,
                nested_index: bool = False, missing_arches: tuple[str, ...] = (), attestation: bool = False,
                ref: str = "docker.io/library/hermes-agent:1.0-local", compress: bool = False) -> Path:
    """The Docker 25+ layout (blobs/sha256, index.json, oci-layout; manifest.json optional).

    `nested_index` writes what the containerd store saves: index.json -> image index -> manifests;
    `missing_arches` are listed in that index but their blobs are left out (other platforms).
    """
    blobs: dict[str, bytes] = {}
    manifest_descriptors, manifest_json = [], []
    for layers, arch in images:
        config = config_json([sha(layer) for layer in layers], arch)
        manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST,
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": sha(config), "size": len(config)},
                               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                           "digest": sha(layer), "size": len(layer)} for layer in layers]}).encode()
        descriptor = {"mediaType": MANIFEST, "digest": sha(manifest), "size": len(manifest),
                      "platform": {"architecture": arch, "os": "linux"}}
        manifest_descriptors.append(descriptor)
        if arch in missing_arches:
            continue
        blobs[sha(config)] = config
        blobs[sha(manifest)] = manifest
        for layer in layers:
            blobs[sha(layer)] = layer
        manifest_json.append({"Config": "blobs/sha256/" + sha(config)[7:], "RepoTags": [ref.split("/")[-1]],
                              "Layers": ["blobs/sha256/" + sha(layer)[7:] for layer in layers]})
    if attestation:
        statement = b'{"_type":"https://in-toto.io/Statement/v0.1"}'
        att = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST,
                          "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                     "digest": sha(b"{}"), "size": 2},
                          "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": sha(statement),
                                      "size": len(statement)}]}).encode()
        blobs[sha(att)], blobs[sha(b"{}")], blobs[sha(statement)] = att, b"{}", statement
        manifest_descriptors.append({"mediaType": MANIFEST, "digest": sha(att), "size": len(att),
                                     "platform": {"architecture": "unknown", "os": "unknown"},
                                     "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                                                     "vnd.docker.reference.digest": manifest_descriptors[0]["digest"]}})
    annotations = {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1]}
    if nested_index:
        image_index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifest_descriptors}).encode()
        blobs[sha(image_index)] = image_index
        top = [{"mediaType": INDEX, "digest": sha(image_index), "size": len(image_index), "annotations": annotations}]
    else:
        top = [dict(d, annotations=annotations) for d in manifest_descriptors]
    members = [(f"blobs/sha256/{digest[7:]}", data) for digest, data in sorted(blobs.items())]
    members.append(("index.json", json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": top}).encode()))
    if with_manifest_json:
        members.append(("manifest.json", json.dumps(manifest_json).encode()))
    members.append(("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'))
    return write_tar(path, members, compress)


LAYER_A = layer_tar({"hello": b"\x7fELF hello"})
LAYER_B = layer_tar({"etc/os-release": b"ID=debian\n"})


@pytest.mark.parametrize("compress", [False, True])
def test_classic_archive(tmp_path, compress):
    path, config = classic_archive(tmp_path / "image.tar", [LAYER_A, LAYER_B], compress=compress)
    identity = identity_from_archive(path)
    assert identity == ImageIdentity((sha(LAYER_A), sha(LAYER_B)), "amd64", "linux", sha(config))
    assert identity.ref == "hermes-agent:1.0-local"


@pytest.mark.parametrize("with_manifest_json", [True, False])
@pytest.mark.parametrize("compress", [False, True])
def test_oci_archive(tmp_path, with_manifest_json, compress):
    path = oci_archive(tmp_path / "image.tar", [([LAYER_A, LAYER_B], "amd64")],
                       with_manifest_json=with_manifest_json, compress=compress)
    identity = identity_from_archive(path)
    assert identity.layers == (sha(LAYER_A), sha(LAYER_B)) and identity.architecture == "amd64"
    assert identity.config_digest == sha(config_json([sha(LAYER_A), sha(LAYER_B)]))
    assert identity.ref == "hermes-agent:1.0-local"


def test_oci_archive_only_index_json_from_the_containerd_store(tmp_path):
    """containerd store: index.json -> image index listing all platforms + attestations,
    blobs only for the platform that was saved."""
    path = oci_archive(tmp_path / "image.tar", [([LAYER_A], "amd64"), ([LAYER_B], "arm64")],
                       with_manifest_json=False, nested_index=True, missing_arches=("arm64",), attestation=True)
    names = tarfile.open(path).getnames()
    assert "manifest.json" not in names and "index.json" in names
    identity = identity_from_archive(path)
    assert identity.layers == (sha(LAYER_A),) and identity.architecture == "amd64"


def test_oci_archive_with_two_platforms_needs_a_choice(tmp_path):
    path = oci_archive(tmp_path / "image.tar", [([LAYER_A], "amd64"), ([LAYER_B], "arm64")],
                       with_manifest_json=False, nested_index=True)
    with pytest.raises(ImageArchiveFormatError, match="several platforms.*linux/amd64, linux/arm64"):
        identity_from_archive(path)
    assert identity_from_archive(path, architecture="aarch64").layers == (sha(LAYER_B),)


def test_same_image_archive_and_both_stores(tmp_path):
    """An archive of the 2025 hello-world (its diff ID) is what the Docker 29 containerd store holds."""
    path = oci_archive(tmp_path / "hello.tar", [([LAYER_A], "amd64")])
    ours = identity_from_archive(path)
    docker29 = identity_from_inspect(recorded("docker-inspect-containerd-docker29-hello-world.json"))
    assert not same_image(ours, docker29)  # other layer
    fake_hello, _ = classic_archive(tmp_path / "hello-classic.tar", [LAYER_A],
                                    config=config_json([HELLO_2025_LAYER]))
    assert same_image(identity_from_archive(fake_hello), docker29)


def test_reading_stops_once_the_identity_is_known(tmp_path):
    """Metadata first, then a "layer" cut short: a reader that went on would hit the damage."""
    config = config_json([sha(LAYER_A)])
    good = write_tar(tmp_path / "full.tar", [
        (hashlib.sha256(config).hexdigest() + ".json", config),
        ("manifest.json", json.dumps([{"Config": hashlib.sha256(config).hexdigest() + ".json",
                                       "RepoTags": ["x:1"], "Layers": ["l/layer.tar"]}]).encode()),
        ("l/layer.tar", b"\0" * 200_000),
    ])
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.read_bytes()[:100_000])
    assert identity_from_archive(cut).layers == (sha(LAYER_A),)


def test_image_build_directory(tmp_path):
    path, config = classic_archive(tmp_path / "hermes.tar.gz", [LAYER_A], compress=True)
    (tmp_path / "image.json").write_text(json.dumps({"archive": "hermes.tar.gz"}))
    assert identity_from_archive(tmp_path).config_digest == sha(config)


def test_errors_are_clear(tmp_path):
    not_tar = tmp_path / "image.tar"
    not_tar.write_bytes(b"this is not a tar archive at all" * 40)
    with pytest.raises(ImageArchiveFormatError, match="not a tar archive"):
        identity_from_archive(not_tar)
    plain = write_tar(tmp_path / "plain.tar", [("etc/hostname", b"x\n")])
    with pytest.raises(ImageArchiveFormatError, match="no manifest.json or index.json"):
        identity_from_archive(plain)
    no_config = write_tar(tmp_path / "noconfig.tar", [("manifest.json", b'[{"Config":"abc.json","Layers":[]}]')])
    with pytest.raises(ImageArchiveFormatError, match="abc.json is missing"):
        identity_from_archive(no_config)
    bad_json = write_tar(tmp_path / "bad.tar", [("manifest.json", b"[{")])
    with pytest.raises(ImageArchiveFormatError, match="not valid JSON"):
        identity_from_archive(bad_json)
    two = write_tar(tmp_path / "two.tar", [("manifest.json", b'[{"Config":"a.json","RepoTags":["a:1"]},'
                                                             b'{"Config":"b.json","RepoTags":["b:1"]}]')])
    with pytest.raises(ImageArchiveFormatError, match="holds 2 images"):
        identity_from_archive(two)
    no_rootfs = write_tar(tmp_path / "norootfs.tar", [("c.json", b'{"architecture":"amd64"}'),
                                                      ("manifest.json", b'[{"Config":"c.json"}]')])
    with pytest.raises(ImageArchiveFormatError, match="rootfs.diff_ids"):
        identity_from_archive(no_rootfs)
    truncated = tmp_path / "truncated.tar.gz"
    full, _ = classic_archive(tmp_path / "full.tar.gz", [LAYER_A, LAYER_B], compress=True)
    truncated.write_bytes(full.read_bytes()[:300])
    with pytest.raises(ImageArchiveFormatError):
        identity_from_archive(truncated)
    with pytest.raises(ImageArchiveFormatError, match="does not exist"):
        identity_from_archive(tmp_path / "missing.tar")
    with pytest.raises(ImageArchiveFormatError, match="without image.json"):
        identity_from_archive(tmp_path)
    assert issubclass(ImageArchiveFormatError, ValueError)


def test_real_built_image_archive_when_present():
    """The archive `imagebuild.build_image()` caches, if one was built on this machine."""
    metas = sorted((hostenv.cache_dir() / "hermes-images").glob("*/image.json"))
    if not metas:
        pytest.skip("no image built by hermes_infra.images.build.build_image() in the cache")
    meta = json.loads(metas[-1].read_text())
    identity = identity_from_archive(metas[-1].parent)
    assert identity.config_digest == meta["image_id"]
    if meta.get("diff_id"):
        assert identity.layers == (meta["diff_id"],)
    assert identity.ref == meta["ref"]
    assert architecture_mismatch(identity, identity.architecture) is None


# --- architectures -------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, docker", [
    ("x86_64", "amd64"), ("amd64", "amd64"), ("aarch64", "arm64"), ("arm64", "arm64"),
    ("armv7l", "arm/v7"), ("armhf", "arm/v7"), ("armv6l", "arm/v6"), ("armel", "arm/v6"),
    ("i686", "386"), ("i386", "386"), ("ppc64el", "ppc64le"), ("ppc64le", "ppc64le"),
    ("s390x", "s390x"), ("riscv64", "riscv64"), ("x86_64\n", "amd64"),
])
def test_host_architecture(raw, docker):
    assert host_architecture(raw) == docker


def test_normalize_architecture_like_containerd():
    assert normalize_architecture("arm64", "v8") == "arm64"
    assert normalize_architecture("arm64/v8") == "arm64"
    assert normalize_architecture("arm", "") == "arm/v7"
    assert normalize_architecture("amd64", "v1") == "amd64"
    assert normalize_architecture("AMD64") == "amd64"
    with pytest.raises(ValueError):
        host_architecture("  ")


def test_architecture_mismatch_message():
    arm_image = ImageIdentity((HELLO_2025_LAYER,), "arm64", "linux", None, ref="hermes-agent:0.19.0-local")
    message = architecture_mismatch(arm_image, "x86_64")
    assert message is not None
    for part in ("hermes-agent:0.19.0-local", "linux/arm64", "linux/amd64", "docker buildx",
                 "--platform linux/amd64", "hermes-infra image build", "amd64 machine"):
        assert part in message, part
    assert architecture_mismatch(arm_image, "aarch64") is None
    assert architecture_mismatch(arm_image, "arm64") is None
    assert "other:tag" in architecture_mismatch(arm_image, "amd64", ref="other:tag")
    v7 = ImageIdentity((), "arm/v7", "linux", None)
    assert architecture_mismatch(v7, "armv7l") is None
    assert architecture_mismatch(ImageIdentity((), "arm/v6", "linux", None), "armv7l") is None
    assert "the image" in architecture_mismatch(v7, "armv6l")
