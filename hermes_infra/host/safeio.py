"""Reading and writing files in a data dir that an agent with a shell controls.

The gateway runs as uid 10000 and owns its data dir, so anything there may have been planted:
`.env -> /etc/shadow`, a FIFO that hangs a reader, a directory, a hard link, or a file swapped
for a symlink between a check and a use. Root on the host therefore never opens a path in a
data dir as root:

- reads run as the data dir's owner (`setpriv`), open with `O_NOFOLLOW|O_NONBLOCK` (`dd
  iflag=nofollow,nonblock`: a symlink fails, a FIFO cannot block), and are only believed when
  the path was a regular, singly linked file with the same inode before and after the read;
- writes are prepared in a root-only staging dir, then copied in by the owner into a fresh
  `mktemp` name and renamed over the target (`mv -T`: the rename replaces a planted link
  itself instead of following it). Nothing is chowned or chmodded by path in the data dir;
- `cd` into the data dir happens as root, so the owner needs no search permission on the
  parents (`/root` is 0700), and the data dir itself is checked not to be a symlink first.

Everything here only builds shell text: the facts and operations run it, tests read it.
"""
from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass

# Files bigger than this are not read (a planted multi-GB `.env` must not fill the control
# machine's memory); the plan refuses them with a message.
MAX_READ_BYTES = 1 << 20
# A `.env` is a few KiB; reading more only for the key would be a disk-sized read (F1).
MAX_ENV_BYTES = 64 << 10
MARK = "@@hermes-infra"
READ_ATTEMPTS = 3  # reads of one file that saw it replaced, before it is reported `changed`


def as_owner(uid: int, gid: int) -> str:
    """Prefix that drops every privilege to the data dir's owner for one command."""
    return f"setpriv --reuid={int(uid)} --regid={int(gid)} --clear-groups --"


def enter(directory: str) -> str:
    """`cd` into a data dir that must be a real directory, not a link to one."""
    quoted = shlex.quote(directory)
    return f"[ -d {quoted} ] && [ ! -L {quoted} ] && cd -P -- {quoted}"


def _lstat(name: str) -> str:
    # stat without -L describes the link itself; %h is the link count (hard links).
    return f"LC_ALL=C stat -c '%F|%i|%h|%u|%g|%a' -- {shlex.quote(name)} 2>/dev/null || echo 'missing|0|0|0|0|0'"


# Run as the owner: opens `./$2` once, then believes the *opened* file only when fstat (stat -L
# of the fd) shows the regular, singly linked inode root's lstat saw ($1 = "dev:inode"). A swap
# to a link, device or another file between the lstat and the open is caught on the fd itself,
# so no raw device or foreign file is ever read. The redirect cannot ask for O_NONBLOCK, so a
# FIFO swapped in would block the open: `timeout` ends that.
_OWNER_OPEN = ('exec 3< "./$2" || exit 1; '
               'case "$(LC_ALL=C stat -L -c \'%d:%i|%F|%h\' /dev/fd/3 2>/dev/null)" in '
               '"$1|regular file|1"|"$1|regular empty file|1") head -c "$3" <&3;; esac')


def owner_read(name: str, uid: int, gid: int, limit: int) -> str:
    """Shell printing at most `limit` bytes of `name` (in the current dir, a data dir), read as the
    owner, and only if it is a regular, singly linked file (never a symlink, device, FIFO, socket,
    directory or hard link); prints nothing otherwise, and never opens anything else."""
    quoted = shlex.quote(name)
    return (f"hi_s=$(LC_ALL=C stat -c '%h|%F|%d:%i' -- {quoted} 2>/dev/null); case \"$hi_s\" in "
            f"'1|regular file|'*|'1|regular empty file|'*) "
            f"timeout 10 {as_owner(uid, gid)} sh -c {shlex.quote(_OWNER_OPEN)} sh "
            f"\"${{hi_s##*|}}\" {quoted} {int(limit)} 2>/dev/null;; esac")


def read_script(directory: str, names: list[str], uid: int, gid: int, label: str) -> str:
    """Shell that prints, for each file `name` in `directory`, a block parsed by `parse_reads`.

    Runs in a subshell so the `cd` does not leak into the caller's script.
    """
    parts = [f"echo '{MARK} dir {label}'"]
    body = []
    for name in names:
        quoted = shlex.quote(name)
        # Hermes replaces its files by rename (jobs.json on every scheduler tick): a read that
        # saw the path change under it is tried again, twice, before it is called `changed`.
        body.append(
            f"echo '{MARK} file {label} {name}'; hi_n=0; while :; do hi_n=$((hi_n+1)); hi_b=$({_lstat(name)}); "
            f"hi_d=$({{ {owner_read(name, uid, gid, MAX_READ_BYTES + 1)}; }} | base64 -w0); hi_a=$({_lstat(name)}); "
            f"if [ \"$hi_b\" = \"$hi_a\" ] || [ $hi_n -ge {READ_ATTEMPTS} ]; then break; fi; sleep 0.2; done; "
            f"printf '%s\\n%s\\n%s\\n' \"$hi_b\" \"$hi_d\" \"$hi_a\""
        )
    parts.append(f"( if {enter(directory)}; then echo present; {'; '.join(body)}; "
                 f"elif [ -L {shlex.quote(directory)} ]; then echo symlink; "
                 f"elif [ -e {shlex.quote(directory)} ]; then echo notdir; else echo missing; fi )")
    return "; ".join(parts)


@dataclass(frozen=True)
class FileRead:
    """What a hostile-safe read found at one path."""

    kind: str
    """`regular`, `missing`, `symlink`, `fifo`, `directory`, `hardlink`, `changed` (swapped during
    the read), `toolarge`, `other`."""
    text: str | None = None
    owner: tuple[int, int, str] | None = None
    """uid, gid and octal mode of a regular file."""

    @property
    def usable(self) -> bool:
        return self.kind in ("regular", "missing")

    def __repr__(self) -> str:  # the text may be a .env: never in a repr or a traceback
        return f"FileRead(kind={self.kind!r}, {0 if self.text is None else len(self.text)} characters)"

    __str__ = __repr__


KIND_NAMES = {
    "regular file": "regular", "regular empty file": "regular", "symbolic link": "symlink",
    "fifo": "fifo", "directory": "directory", "missing": "missing",
}


def classify(before: str, encoded: str, after: str) -> FileRead:
    kind_b, inode_b, links_b, uid_b, gid_b, mode_b = (before.split("|") + ["0"] * 6)[:6]
    kind_a, inode_a, *_ = (after.split("|") + ["0"] * 6)[:6]
    kind = KIND_NAMES.get(kind_b, "other")
    if kind == "missing" and kind_a == "missing":
        return FileRead("missing")
    if (kind_b, inode_b) != (kind_a, inode_a):
        return FileRead("changed")
    if kind != "regular":
        return FileRead(kind)
    if links_b != "1":
        return FileRead("hardlink")
    data = base64.b64decode(encoded.strip() or b"")
    if len(data) > MAX_READ_BYTES:
        return FileRead("toolarge")
    return FileRead("regular", data.decode("utf-8", errors="surrogateescape"),
                    (int(uid_b), int(gid_b), mode_b.rjust(4, "0")))


def parse_reads(lines: list[str]) -> dict[str, dict]:
    """label -> {"dir": present|missing|symlink|notdir, "files": {name: FileRead}}."""
    result: dict[str, dict] = {}
    current_label = None
    index = 0
    while index < len(lines):
        line = lines[index].rstrip("\n")
        if line.startswith(f"{MARK} dir "):
            current_label = line.split(" ", 2)[2]
            state = lines[index + 1].strip() if index + 1 < len(lines) else "missing"
            result[current_label] = {"dir": state, "files": {}}
            index += 2
            continue
        if line.startswith(f"{MARK} file "):
            _, _, label, name = line.split(" ", 3)
            block = [item.rstrip("\n") for item in lines[index + 1:index + 4]]
            block += [""] * (3 - len(block))
            result[label]["files"][name] = classify(block[0], block[1], block[2])
            index += 4
            continue
        index += 1
    return result


def write_script(directory: str, name: str, staged: str, uid: int, gid: int, mode: str = "0600") -> str:
    """Replace `directory/name` atomically with the staged file's bytes, as the owner.

    The owner creates a fresh temp name (mktemp, O_EXCL), fills it from the staged file (opened
    by root, passed as stdin), sets the mode on its own file and renames it over the target.
    """
    inner = ('umask 077; t=$(mktemp -- "$1.hermes-infra.XXXXXX") || exit 1; '
             'if cat > "$t" && chmod "$2" "$t" && mv -fT -- "$t" "$1"; then exit 0; fi; rm -f -- "$t"; exit 1')
    return (f"( {enter(directory)} && {as_owner(uid, gid)} sh -c {shlex.quote(inner)} sh "
            f"{shlex.quote(name)} {shlex.quote(mode)} < {shlex.quote(staged)} )")


def backup_script(directory: str, name: str, uid: int, gid: int, target: str) -> str:
    """Copy `directory/name` (read as the owner, never followed) to a root-only backup file."""
    return (f"( umask 077; {enter(directory)} && {{ {owner_read(name, uid, gid, MAX_READ_BYTES)}; }} "
            f"> {shlex.quote(target)} )")


def chown_foreign_script(directory: str, uid: int, gid: int) -> str:
    """Give files under the data dir written by root back to the owner, without a race.

    `-execdir` runs chown from each file's own directory on `./name` (find walks with
    directory fds), and `-h` changes a link itself: a directory swapped for a symlink during
    the walk cannot redirect the chown out of the data dir. Only directories, symlinks and
    singly linked regular files are handed back: hard-linked files stay, and so do device nodes,
    FIFOs and sockets (a device node owned by the owner would let the owner's host-side reads
    open the host's raw disk, outside the container's device cgroup).
    """
    return (f"{enter(directory)} && find . -xdev \\( ! -uid {int(uid)} -o ! -gid {int(gid)} \\) "
            f"\\( -type d -o -type l -o \\( -type f -links 1 \\) \\) -execdir chown -h {int(uid)}:{int(gid)} {{}} +")
