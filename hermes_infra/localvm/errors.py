"""Exceptions raised by the local VM library.

One base class so that the CLI can turn any local-VM failure into a clean message
without catching unrelated errors.
"""
from __future__ import annotations


class LocalVMError(RuntimeError):
    """Base class for every failure of the local VM library."""


class ImageBuildError(LocalVMError):
    """Building the base image failed; the message carries the tail of the build log."""


class VMNotFound(LocalVMError):
    """No VM of that name has a state file in the cache."""


class VMBootError(LocalVMError):
    """QEMU did not start, died, or the guest never answered SSH; carries the serial log tail."""
