"""Getting the Hermes image onto the host: pulled (optionally through a mirror), or uploaded
as a `docker save` archive and loaded (hosts that cannot reach Docker Hub)."""
from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.operations import files

from hermes_infra.plan import ImagePlan, Writer


@operation()
def image_present(plan: ImagePlan, writer: Writer):
    """The host has `plan.ref`, and for archives exactly the archive's layers."""
    ref = shlex.quote(plan.ref)
    if plan.present:
        host.noop(f"{plan.ref} is present" + (" with the archive's layers" if plan.source == "archive" else ""))
        return
    if plan.source == "pull":
        if plan.pull_ref:
            mirrored = shlex.quote(plan.pull_ref)
            yield f"docker pull -q {mirrored} && docker tag {mirrored} {ref}"
        else:
            yield f"docker pull -q {ref}"
        return
    yield f"install -d -m 0700 {shlex.quote(plan.cache_dir)}"
    # files.put skips the upload when the host already has a file with this checksum.
    yield from files.put._inner(src=plan.archive_path, dest=plan.remote_archive, mode="0600")
    yield f"docker load -q -i {shlex.quote(plan.remote_archive)}"
    if plan.archive_ref and plan.archive_ref != plan.ref:
        yield f"docker tag {shlex.quote(plan.archive_ref)} {ref}"
    # Keep only the archive just loaded: images are hundreds of MB.
    yield (f"find {shlex.quote(plan.cache_dir)} -maxdepth 1 -type f "
           f"! -name {shlex.quote(plan.remote_archive.rsplit('/', 1)[1])} -delete")


@deploy("Hermes image")
def image(plan: ImagePlan, writer: Writer):
    image_present(name=f"Image {plan.ref} ({plan.source})", plan=plan, writer=writer)
