"""Wait, with a bound and a message, for the apt/dpkg locks other processes hold.

On a fresh VPS, unattended-upgrades (apt-daily*.service) or cloud-init often hold the apt
and dpkg locks for minutes; `apt-get` then fails at once with "Could not get lock".
`wait_for_apt_locks_script()` is a POSIX `sh` snippet to run before the deploy's apt
operations: it returns at once when no lock is held, otherwise says once which process
holds which lock, waits up to a bound, and fails with what to do.

Does apt's own `DPkg::Lock::Timeout` cover `apt-get update`? No, not on Debian 12 (apt 2.6)
nor Debian 13 (apt 3.0). Source: apt's code at tags 2.6.1 (Debian 12) and 3.0.3 (Debian 13),
github.com/Debian/apt (mirror of salsa.debian.org/apt-team/apt):
- `DPkg::Lock::Timeout` is read in exactly one place, `debSystem::Lock()` in
  apt-pkg/deb/debsystem.cc, which waits (`GetLockMaybeWait`, one try per second) for
  /var/lib/dpkg/lock-frontend and /var/lib/dpkg/lock only;
- `apt-get update` takes /var/lib/apt/lists/lock through `pkgAcquire::GetLock()`
  (apt-pkg/acquire.cc, called from `ListUpdate()` in apt-pkg/update.cc), which calls
  `::GetLock()` (apt-pkg/contrib/fileutl.cc: `fcntl(F_SETLK)`, no wait) and fails with
  "Could not get lock /var/lib/apt/lists/lock. It is held by process N";
- the same non-waiting `pkgAcquire::GetLock()` guards /var/cache/apt/archives/lock for
  downloads in `apt-get install` (apt-private/private-install.cc), although there the
  frontend lock (which does wait) is normally taken first.
The option is undocumented in apt.conf(5) (only listed in doc/examples/configure-index);
the `apt` binary defaults it to 120 s (-1 on a tty), `apt-get` to 0. So: the option is a
belt-and-braces for install/remove (`APT_LOCK_TIMEOUT_OPTION`), and the lists lock needs
this wait.

All four locks are fcntl (POSIX, "advisory write") locks on the whole file, taken by apt
(`GetLock`), dpkg and python-apt (unattended-upgrades). flock(1) cannot test them (flock
and fcntl locks do not see each other on Linux), and neither lsof nor fuser (psmisc) is
Essential, nor is awk (mawk is only Priority: required). So the snippet reads
/proc/locks (`N: POSIX  ADVISORY  WRITE <pid> <maj>:<min>:<inode> <start> <end>`; lines
with `->` are waiters, not holders) and matches the lock file's inode (`stat -c %i`),
confirmed by the device number or by the holder having the file open in /proc/<pid>/fd
(btrfs reports another st_dev than /proc/locks). /proc/locks says who *holds* a lock,
where fuser only says who has the file open; fuser is the fallback when /proc/locks
cannot be read. Only dash and coreutils (stat, sleep, readlink, cat, date) are used: Essential
packages of Debian 12 and 13 (and of Ubuntu 22.04 and 24.04, whose apt, dpkg, dash and
coreutils take and report the locks the same way), plus tr (coreutils) to keep the holder's name plain.
"""
from __future__ import annotations

import shlex

__all__ = [
    "APT_LOCKS",
    "APT_LOCK_EXIT",
    "APT_LOCK_TIMEOUT_OPTION",
    "HOLDERS",
    "TIMEOUT_MARK",
    "WAIT_MARK",
    "wait_for_apt_locks_script",
]

# In the order apt and dpkg take them.
APT_LOCKS = (
    "/var/lib/dpkg/lock-frontend",
    "/var/lib/dpkg/lock",
    "/var/lib/apt/lists/lock",
    "/var/cache/apt/archives/lock",
)
# Who usually holds apt's locks on a fresh Debian or Ubuntu host, by the name the kernel gives
# the process (/proc/<pid>/comm: at most 15 characters), and what to call it in a message.
HOLDERS = {
    "unattended-upgr": "unattended-upgrades",
    "apt.systemd.dai": "apt.systemd.daily (apt-daily.service)",
    "cloud-init": "cloud-init",
    "packagekitd": "packagekitd (PackageKit)",
}
# Exit status of the snippet when the bound is reached (EX_TEMPFAIL: try again later).
APT_LOCK_EXIT = 75
# Fixed parts of the two messages (stderr), for callers and tests that look for them.
WAIT_MARK = "hermes-infra: waiting up to"
TIMEOUT_MARK = "hermes-infra: gave up waiting for the apt lock"

_SCRIPT = r"""(
R=__ROOT__
T=__TIMEOUT__
P=__POLL__
L=__LOCKS__
hi_holder() {
  # One read of /proc/locks (cat: one large read() is one consistent snapshot). The shell's
  # `read` takes it a byte per read(), and a lock released meanwhile shifts the kernel's place
  # in the list: the holder's line could be skipped and a held lock taken for free.
  table=
  if [ -r "$L" ] && table=$(cat -- "$L" 2>/dev/null); then readable=1; else readable=; fi
  for f in "$R/var/lib/dpkg/lock-frontend" "$R/var/lib/dpkg/lock" "$R/var/lib/apt/lists/lock" "$R/var/cache/apt/archives/lock"; do
    [ -f "$f" ] || continue
    if [ -n "$readable" ]; then
      s=$(stat -L -c '%i %d' -- "$f" 2>/dev/null) || continue
      ino=${s% *}
      dev=${s#* }
      mm=$(printf '%02x:%02x' $(( (dev >> 8) & 4095 )) $(( (dev & 255) | ((dev >> 12) & 1048320) )))
      real=$(readlink -f -- "$f" 2>/dev/null) || real=$f
      while read -r _n typ _adv _rw pid id _rest; do
        [ "$typ" = "->" ] && continue
        [ "${id##*:}" = "$ino" ] || continue
        ok=
        [ "${id%:*}" = "$mm" ] && ok=1
        if [ -z "$ok" ] && [ -d "/proc/$pid/fd" ]; then
          for fd in "/proc/$pid/fd"/*; do
            [ "$(readlink "$fd" 2>/dev/null)" = "$real" ] && { ok=1; break; }
          done
        fi
        [ -n "$ok" ] || continue
        echo "$pid $f"
        return 0
      done <<HI_LOCKS
$table
HI_LOCKS
    elif command -v fuser >/dev/null 2>&1; then
      pids=$(fuser "$f" 2>/dev/null) || continue
      for pid in $pids; do
        echo "${pid%%[!0-9]*} $f"
        return 0
      done
    fi
  done
  return 1
}
hi_name() {
  case "$1" in
    ''|-*) echo "an unknown process" ;;
    *) # The name is the holder's choice (an agent's process, at worst): no escapes pass.
       n=$(tr -cd 'A-Za-z0-9._:+-' 2>/dev/null < "/proc/$1/comm") || n=
       case "$n" in
__HOLDERS__
         '') n="a process that has exited" ;;
       esac
       echo "$n (pid $1)" ;;
  esac
}
hi_now() {
  # centiseconds since boot (/proc/uptime has two decimals); date +%s as a fallback
  if read -r u _ 2>/dev/null < /proc/uptime; then
    echo $(( ${u%.*} * 100 + 1${u#*.} - 100 ))
  else
    echo $(( $(date +%s) * 100 ))
  fi
}
start=$(hi_now)
shown=
while h=$(hi_holder); do
  pid=${h%% *}
  f=${h#* }
  lock=${f#"$R"}
  who=$(hi_name "$pid")
  waited=$(( $(hi_now) - start ))
  if [ "$waited" -ge $(( T * 100 )) ]; then
    printf '%s after %ss: %s is still held by %s.\n' "__TIMEOUT_MARK__" "$(( waited / 100 ))" "$lock" "$who" >&2
    printf '%s\n' "Fix: let it finish and deploy again (on a fresh VPS this is usually cloud-init or unattended-upgrades: run 'cloud-init status --wait', or 'systemctl stop unattended-upgrades apt-daily.service apt-daily-upgrade.service' and wait for the process to exit; on Ubuntu also PackageKit: 'systemctl stop packagekit'), or raise apt_lock_timeout_seconds (now ${T}s). Do not delete the lock file: that breaks dpkg's database." >&2
    exit __EXIT__
  fi
  if [ "$h" != "$shown" ]; then
    printf '%s %ss for the apt lock held by %s on %s\n' "__WAIT_MARK__" "$T" "$who" "$lock" >&2
    shown=$h
  fi
  sleep "$P"
done
exit 0
)"""


def wait_for_apt_locks_script(timeout_seconds: int, root: str = "", poll_seconds: float = 1, *,
                              proc_locks: str = "/proc/locks") -> str:
    """A POSIX sh snippet that waits until no apt/dpkg lock is held, for at most `timeout_seconds`.

    Exits 0 at once when none is held. While one is, prints once per holder to stderr
    `hermes-infra: waiting up to 600s for the apt lock held by unattended-upgr (pid 1234) on
    /var/lib/dpkg/lock-frontend`; after the bound it prints what holds the lock and what to do,
    and exits `APT_LOCK_EXIT` (75). The snippet is one parenthesized subshell, so it can be
    chained: `{script} && apt-get update`. `root` prefixes the lock paths (tests use a temp dir);
    `proc_locks` exists for tests of the `fuser` fallback (used when it cannot be read).
    """
    timeout = int(timeout_seconds)
    if timeout < 0:
        raise ValueError("timeout_seconds must be >= 0")
    poll = float(poll_seconds)
    if not 0 < poll <= 60:
        raise ValueError("poll_seconds must be in (0, 60]")
    root = str(root or "").rstrip("/")
    replacements = {
        "__ROOT__": shlex.quote(root) if root else "''",
        "__TIMEOUT__": str(timeout),
        "__POLL__": f"{poll:g}",
        "__LOCKS__": shlex.quote(proc_locks),
        "__EXIT__": str(APT_LOCK_EXIT),
        "__WAIT_MARK__": WAIT_MARK,
        "__TIMEOUT_MARK__": TIMEOUT_MARK,
        "__HOLDERS__": "\n".join(f"         {shlex.quote(comm)}) n={shlex.quote(name)} ;;" for comm, name in HOLDERS.items()),
    }
    script = _SCRIPT
    for key, value in replacements.items():
        script = script.replace(key, value)
    return script


def APT_LOCK_TIMEOUT_OPTION(timeout: int) -> str:  # noqa: N802 - the name the deploy code uses
    """`-o DPkg::Lock::Timeout=N` for apt-get install/remove: apt itself then waits up to N s
    for the dpkg locks (not for the lists lock of `apt-get update`, see the module docstring)."""
    seconds = int(timeout)
    if seconds < 0:
        raise ValueError("timeout must be >= 0")
    return f"-o DPkg::Lock::Timeout={seconds}"
