"""Upgrades with a way back: keep the previous image, snapshot the data dirs with the gateways
stopped, start the new image, gate it, and roll back to the previous image and the snapshots
when the gate fails.

On the host (all root-only, 0700):
- `/var/lib/hermes-infra/releases/<id>/` for each kept previous image `hermes-infra/previous:<id>`
  (`<id>`: 12 hex digits of the image ID that ran before the upgrade): `compose.yaml` (the
  compose file that ran it, pinned to that tag) and `snapshots` (profile, data dir, archive).
- `/var/lib/hermes-infra/releases/pending`: the id of an upgrade whose gate has not passed yet
  (a deploy interrupted there is rolled forward by the next run, or back with `rollback`).
- `<backup_dir>/snapshot-<profile>-<stamp>.tar.gz`: `tar` of the data dir (never follows a link,
  never reads a FIFO), made while the gateway is stopped, so SQLite files are consistent.

Unlike `hermes-infra backup` and the scheduled backups, which copy online (`datatar`), this
snapshot stops the gateways, on purpose: the upgrade stops them anyway to replace their
containers, so the stop costs no extra outage beyond the tar itself, and a snapshot of a
stopped tree is exactly what the old version left. An online copy taken before the stop would
lose, on rollback, everything written between the copy and the stop; and with the gateway
stopped the `-wal` files must stay in the snapshot (a gateway killed after its stop grace
leaves committed rows there), so `datatar.LEFT_OUT` does not apply to it.

Rollback restores a snapshot without extracting into the agent's data dir: it is unpacked into
a fresh root-only directory, the current data dir is renamed aside (`<dir>.rolled-back-<stamp>`,
kept: nothing the new version wrote is lost) and the restored tree renamed into place.
"""
from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation

from hermes_infra.operations.health import gate_script
from hermes_infra.plan import datatar
from hermes_infra.plan.hostplan import DEPLOYED_NAME, HealthPlan, UpgradePlan

RELEASES = "/var/lib/hermes-infra/releases"
PREVIOUS_REPO = "hermes-infra/previous"
ID_PATTERN = "[0-9a-f]" * 12
STAMP_GLOB = "[0-9]" * 8 + "T" + "[0-9]" * 6  # date +%Y%m%dT%H%M%S
REGATE_SECONDS = 180


def _q(value: str) -> str:
    return shlex.quote(value)


def prepare_script(plan: UpgradePlan, releases: str = RELEASES) -> str:
    """Before anything in the data dirs changes: when the image differs from what the gateway
    runs, keep the old image and compose file, stop the gateways and snapshot their data dirs."""
    first = plan.services[0]
    snapshots = []
    for name, directory in plan.data_dirs:
        # The setting is quoted on its own; only $stamp expands (F14: `$(…)` in backup_dir is text).
        archive = _q(f'{plan.backup_dir}/snapshot-{name}-') + '"$stamp".tar.gz'
        quoted = _q(directory)
        # Bounded like every tar of a data dir (`datatar`); a snapshot that fails stops the
        # upgrade: a rollback without it could not give this profile its data back.
        snapshots.append(
            f'if [ -d {quoted} ] && [ ! -L {quoted} ]; then '
            f'{datatar.size_check(quoted)} || abort "the data dir {directory} is too large to snapshot"; '
            f'{datatar.tar_create()} -C / -czf {archive} {_q(directory.lstrip("/"))} '
            f'|| {{ rc=$?; rm -f -- {archive}; abort "the snapshot of {directory} failed (exit $rc)"; }}; '
            # Read back too: a snapshot is only believed (and older ones pruned) when it lists whole.
            f'tar -tzf {archive} >/dev/null 2>&1 '
            f'|| {{ rm -f -- {archive}; abort "the snapshot of {directory} does not read back"; }}; '
            f'printf "%s\\t%s\\t%s\\n" {_q(name)} {quoted} {archive} >> "$rel/snapshots.new"; fi')
        # Older snapshots go, except those a kept release still needs for its rollback. The stamp's
        # own digits in the pattern: `snapshot-{name}-*` also matched profile `{name}-x`'s.
        snapshots.append(
            f'( cd {_q(plan.backup_dir)} && ls -1t -- snapshot-{name}-{STAMP_GLOB}.tar.gz 2>/dev/null '
            f'| tail -n +{plan.keep + 1} '
            '| while IFS= read -r old; do grep -qF -- "/$old" "$R"/*/snapshots "$rel/snapshots.new" 2>/dev/null '
            '|| rm -f -- "$old"; done )')
    services = ' '.join(_q(s) for s in plan.services)
    return f"""
set -e
umask 077
R={_q(releases)}
new=$(docker image inspect -f '{{{{.Id}}}}' {_q(plan.image_ref)})
old=$(docker inspect -f '{{{{.Image}}}}' {_q(first)} 2>/dev/null || true)
if [ -z "$old" ] || [ "$old" = "$new" ]; then echo "image unchanged: no upgrade step"; exit 0; fi
id=$(printf %s "$old" | sed 's/^sha256://' | cut -c1-12)
stamp=$(date +%Y%m%dT%H%M%S)
rel="$R/$id"
install -d -m 0700 /var/lib/hermes-infra "$R" {_q(plan.backup_dir)}
rm -rf "$rel" && install -d -m 0700 "$rel"
docker tag "$old" {PREVIOUS_REPO}:$id
oldref=$(docker inspect -f '{{{{.Config.Image}}}}' {_q(first)})
awk -v from="    image: \\"$oldref\\"" -v to="    image: \\"{PREVIOUS_REPO}:$id\\"" '$0 == from {{print to; next}} {{print}}' \\
  {_q(plan.project_dir + '/compose.yaml')} > "$rel/compose.yaml"
echo "$id" > "$R/pending"
# Before any data dir changes, a failure puts the gateways back on the old image and forgets this release.
abort() {{
  echo "hermes-infra: upgrade stopped before anything changed: $1; the gateways run the previous image again" >&2
  docker start {services} >/dev/null 2>&1 || true
  rm -f "$R/pending"; rm -rf -- "$rel"; docker rmi {PREVIOUS_REPO}:$id >/dev/null 2>&1 || true
  exit 1
}}
echo "upgrade: kept the previous image as {PREVIOUS_REPO}:$id; stopping the gateways for a consistent snapshot"
# A gateway still running while its snapshot is taken would give an inconsistent copy.
docker stop -t {int(plan.stop_grace_seconds)} {services} >/dev/null || abort "the gateways could not be stopped"
: > "$rel/snapshots.new"
{chr(10).join(snapshots)}
mv -fT "$rel/snapshots.new" "$rel/snapshots"
# The revision that ran before: what `rollback --to REVISION` names.
cp -f {_q(plan.project_dir + '/' + DEPLOYED_NAME)} "$rel/revision" 2>/dev/null || true
touch "$rel"
# Keep the newest {plan.keep} previous images; never the one just kept (the rollback target).
ls -1t "$R" | grep -x '{ID_PATTERN}' | tail -n +{plan.keep + 1} | while IFS= read -r gone; do
  [ "$gone" = "$id" ] && continue
  docker rmi {PREVIOUS_REPO}:"$gone" >/dev/null 2>&1 || true
  rm -rf -- "$R/$gone"
done
echo "upgrade: snapshots in "{_q(plan.backup_dir)}" ($(cut -f3 "$rel/snapshots" | tr '\\n' ' '))"
""".strip()


def _owner_function(owners: dict[str, tuple[int, int]]) -> str:
    """Shell `owner_of DIR`: the configured uid:gid of a data dir (never what the archive says)."""
    cases = " ".join(f"{_q(d)}) echo {int(u)}:{int(g)} ;;" for d, (u, g) in sorted(owners.items()))
    return f'owner_of() {{ case "$1" in {cases} *) return 1 ;; esac; }}'


def rollback_script(plan_project_dir: str, project: str, services: tuple[str, ...], grace: int,
                    release_id: str | None = None, releases: str = RELEASES, keep: int = 3,
                    owners: dict[str, tuple[int, int]] | None = None) -> str:
    """Stop the gateways, restore each snapshot of release `release_id` (a kept image's id or
    the revision that ran it; default: the pending upgrade's, else the newest kept), bring the
    previous image's compose file up. Of the data dirs the newer version left, the newest
    `keep` per profile are kept.

    `owners` (data dir -> uid, gid, from the settings) decides who owns the restored tree. The
    snapshot was made by root from what the agent wrote, so it is unpacked in a root-only dir
    and, before it is renamed into place, loses its device nodes and sockets and every setuid
    and setgid bit, and is given to the configured owner: what an agent with container root
    planted (root setuid binaries, a raw-disk node) is not planted again by a rollback."""
    if release_id:
        # A release is named by its image id (the directory) or by the revision recorded in it.
        pick = (f'id={_q(release_id)}; if [ ! -d "$R/$id" ]; then '
                f'found=$(grep -lx -- {_q(release_id)} "$R"/{ID_PATTERN}/revision 2>/dev/null | head -n 1); '
                'id=$(basename "$(dirname "${found:-/none/none}")"); fi')
    else:
        pick = f'if [ -f "$R/pending" ]; then id=$(cat "$R/pending"); else id=$(ls -1t "$R" | grep -x \'{ID_PATTERN}\' | head -n 1); fi'
    project_dir = _q(plan_project_dir)
    return f"""
set -e
umask 077
R={_q(releases)}
{pick}
rel="$R/$id"
if [ -z "$id" ] || [ ! -f "$rel/compose.yaml" ] || [ ! -f "$rel/snapshots" ]; then
  echo "hermes-infra: no kept release ${{id:-(none)}} to roll back to in $R" >&2; exit 1
fi
docker image inspect {PREVIOUS_REPO}:$id >/dev/null
{_owner_function(owners or {})}
tab=$(printf '\\t')
# Everything is checked before anything changes: each snapshot there, each data dir's owner known.
while IFS="$tab" read -r name dir archive; do
  [ -f "$archive" ] || {{ echo "hermes-infra: snapshot $archive of $name is missing; nothing rolled back" >&2; exit 1; }}
  owner_of "$dir" >/dev/null || {{ echo "hermes-infra: the settings name no gateway with data dir $dir; nothing rolled back" >&2; exit 1; }}
done < "$rel/snapshots"
echo "rollback: to {PREVIOUS_REPO}:$id and the snapshots taken before the upgrade"
# A gateway still running would write into the dir being replaced.
docker stop -t {int(grace)} {' '.join(_q(s) for s in services)} >/dev/null || {{
  echo "hermes-infra: the gateways could not be stopped; nothing rolled back" >&2; exit 1; }}
stamp=$(date +%Y%m%dT%H%M%S)-$$
while IFS="$tab" read -r name dir archive; do
  tmp=$(mktemp -d "${{R%/*}}/restore.XXXXXX")
  tar -C "$tmp" -xzf "$archive" --numeric-owner --no-same-owner --no-acls --no-xattrs
  inner="$tmp/${{dir#/}}"
  if [ ! -d "$inner" ] || [ -L "$inner" ]; then echo "hermes-infra: $archive holds no $dir" >&2; rm -rf "$tmp"; exit 1; fi
  # In the root-only dir nobody else can reach, so these by-path changes cannot be raced.
  find "$inner" \\( -type b -o -type c -o -type s \\) -exec rm -f -- {{}} +
  find "$inner" ! -type l -perm /6000 -exec chmod ug-s -- {{}} +
  chown -R -h "$(owner_of "$dir")" -- "$inner"
  if [ -e "$dir" ] || [ -L "$dir" ]; then mv -T -- "$dir" "$dir.rolled-back-$stamp"; echo "rollback: $dir as the new version left it: $dir.rolled-back-$stamp"; fi
  mv -T -- "$inner" "$dir"
  rm -rf -- "$tmp"
  # Older set-aside dirs go (rm never follows the links the agent may have left in them).
  for old in "$dir".rolled-back-[0-9]*; do [ -d "$old" ] && printf '%s\n' "$old"; done | sort -r | tail -n +{int(keep) + 1} \
  | while IFS= read -r old; do rm -rf -- "$old"; done
done < "$rel/snapshots"
install -m 0644 -o 0 -g 0 -T "$rel/compose.yaml" {project_dir}/compose.yaml.hermes-infra.new
mv -fT {project_dir}/compose.yaml.hermes-infra.new {project_dir}/compose.yaml
# The stamp no longer matches: the next deploy applies the settings again.
echo rolled-back > {project_dir}/.hermes-infra-applied
if [ -f "$rel/revision" ]; then cp -f "$rel/revision" {project_dir}/{DEPLOYED_NAME}; else rm -f {project_dir}/{DEPLOYED_NAME}; fi
cd {project_dir} && docker compose -p {_q(project)} -f compose.yaml up -d --remove-orphans 2>&1
rm -f "$R/pending"
""".strip()


def gate_or_rollback_script(plan: UpgradePlan, gates: tuple[HealthPlan, ...], releases: str = RELEASES) -> str:
    # The new image's gate asks for readiness when health.require_ready is set; the re-gate of the
    # restored previous image below only for liveness (a rollback must not fail on a provider).
    checks = " && ".join("( " + gate_script(g.url, g.container, g.data_dir, g.timeout, g.interval,
                                            require_ready=g.require_ready) + " )" for g in gates)
    owners = {g.data_dir.directory: (g.data_dir.uid, g.data_dir.gid) for g in gates}
    rollback = rollback_script(plan.project_dir, plan.project, plan.services, plan.stop_grace_seconds, None, releases,
                               plan.keep, owners)
    # The previous image starts from cold after the restore: give it at least REGATE_SECONDS.
    regate = " && ".join(f"( {gate_script(g.url, g.container, g.data_dir, max(g.timeout, REGATE_SECONDS), g.interval)} )"
                         for g in gates)
    return f"""
R={_q(releases)}
if {checks}; then rm -f "$R/pending"; exit 0; fi
if [ ! -f "$R/pending" ]; then exit 1; fi
echo "hermes-infra: the new image failed its health gate (log above); rolling back automatically" >&2
( {rollback} ) >&2 || {{ echo "hermes-infra: ROLLBACK FAILED: see above; the snapshots are in "{_q(plan.backup_dir)} >&2; exit 1; }}
if {regate}; then
  echo "hermes-infra: rolled back: the previous image answers again. Fix the image or settings, then deploy again" >&2
else
  echo "hermes-infra: rolled back, but the previous image does not answer either (see above)" >&2
fi
exit 1
""".strip()


@operation()
def prepared(plan: UpgradePlan):
    """Keep the previous image and snapshot the data dirs, when the image changes."""
    yield prepare_script(plan)


@operation(is_idempotent=True)
def gated_or_rolled_back(plan: UpgradePlan, gates: tuple[HealthPlan, ...]):
    """The health gate; if it fails after an upgrade, the automatic rollback."""
    if not any(g.gate_needed for g in gates):
        host.noop("gateways are healthy")
        return
    yield gate_or_rollback_script(plan, gates)
