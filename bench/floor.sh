#!/usr/bin/env bash
# The floor: the same end state as hermes-infra (and bench/ansible/playbook.yml) on one Debian 13
# host, with only the steps that cannot be avoided, over ONE SSH connection (a ControlMaster;
# each step below is a session on it, not a new connection).
#
#   bench/floor.sh --port 2222 --key ~/.ssh/id --known-hosts FILE --archive IMAGE.tar.gz --ref REF
#                  [--host 127.0.0.1] [--memory 1G] [--check]
#
# 1. one batched, read-only check (packages, daemon.json, swap, image, data dir, .env,
#    config.yaml, compose file, the running container's limits, /health 200, /v1/models 401
#    without the key and 200 with it). All fine: "converged", exit 0. That is the whole
#    converged re-run.
# 2. --check: print what would change and stop (the floor's dry run; exit 0).
# 3. otherwise one apply session: daemon.json then apt (only when a package is missing), swap,
#    `docker load` of the archive streamed over the same connection (only when the image is
#    missing), data dir, .env merged (API key kept), config.yaml, compose file, `docker compose
#    up -d`, the health gate. Exit non-zero on any failure.
#
# It is a benchmark yardstick, not a deployment tool: no apt-lock waiting, no backups, no
# symlink-safe writes in the data dir, no YAML merge of a foreign config.yaml.
set -euo pipefail

HOST=127.0.0.1 USER_NAME=root PORT=22 KEY="" KNOWN_HOSTS="" ARCHIVE="" REF="" MEMORY="" CHECK_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --host) HOST=$2; shift 2 ;;
    --user) USER_NAME=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --key) KEY=$2; shift 2 ;;
    --known-hosts) KNOWN_HOSTS=$2; shift 2 ;;
    --archive) ARCHIVE=$2; shift 2 ;;
    --ref) REF=$2; shift 2 ;;
    --memory) MEMORY=$2; shift 2 ;;
    --check) CHECK_ONLY=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "floor.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$REF" ] || { echo "floor.sh: --ref is required" >&2; exit 2; }

# --- what runs on the host (shipped with `declare -f`, so it is plain bash here) -----------
DATA=/root/.hermes PROJECT=/opt/hermes SWAP=/swapfile SWAP_BYTES=1073741824 SWAPPINESS=10 UID_GID=10000
ENV_KEYS=(API_SERVER_ENABLED=true API_SERVER_HOST=0.0.0.0 API_SERVER_PORT=8642
          API_SERVER_MODEL_NAME=hermes-agent HERMES_SKIP_CONFIG_MIGRATION=1)
PACKAGES=(docker.io docker-cli docker-compose)

limits() {  # MEMORY (compose value), MEMORY_BYTES, CPUS, NANO_CPUS: like hermes-infra's defaults
  # Shell arithmetic and builtins only: under emulation every program started costs 40+ ms.
  if [ -z "$MEMORY" ]; then
    local key value mb=0
    while read -r key value _; do [ "$key" = MemTotal: ] && { mb=$(( value / 1024 )); break; }; done </proc/meminfo
    MEMORY=$(( mb * 7 / 8 < mb - 512 ? mb * 7 / 8 : mb - 512 ))m
  fi
  local number=${MEMORY%[bkmgBKMG]} unit=${MEMORY: -1}
  case "$unit" in
    g|G) MEMORY_BYTES=$(( number * 1024 * 1024 * 1024 )) ;;
    m|M) MEMORY_BYTES=$(( number * 1024 * 1024 )) ;;
    k|K) MEMORY_BYTES=$(( number * 1024 )) ;;
    *) MEMORY_BYTES=$number ;;
  esac
  local cpus=0 line hundredths
  while read -r line; do [[ $line == processor* ]] && cpus=$(( cpus + 1 )); done </proc/cpuinfo
  hundredths=$(( (cpus * 625 + 5) / 10 ))  # 5/8 of the CPUs, to two decimals, at least 0.5
  [ $hundredths -ge 50 ] || hundredths=50
  if [ $(( hundredths % 100 )) -eq 0 ]; then CPUS=$(( hundredths / 100 ))
  elif [ $(( hundredths % 10 )) -eq 0 ]; then CPUS=$(( hundredths / 100 )).$(( hundredths % 100 / 10 ))
  else CPUS=$(printf '%d.%02d' $(( hundredths / 100 )) $(( hundredths % 100 ))); fi
  NANO_CPUS=$(( hundredths * 10000000 ))
}

daemon_text() {
  cat <<'EOF'
{
  "icc": false,
  "live-restore": true,
  "log-driver": "json-file",
  "log-opts": {
    "max-file": "3",
    "max-size": "10m"
  },
  "no-new-privileges": true
}
EOF
}

config_text() {
  cat <<'EOF'
tool_loop_guardrails:
  hard_stop_enabled: true
security:
  allow_lazy_installs: false
  tirith_enabled: false
EOF
}

compose_text() {
  cat <<EOF
name: hermes
services:
  hermes:
    image: "$REF"
    container_name: hermes
    command: ["gateway", "run"]
    restart: unless-stopped
    mem_limit: "$MEMORY"
    cpus: $CPUS
    pids_limit: 1024
    security_opt:
      - "no-new-privileges:true"
    environment:
      TZ: "Etc/UTC"
      HERMES_HOME: /opt/data
      HERMES_UID: "$UID_GID"
      HERMES_GID: "$UID_GID"
    volumes:
      - "$DATA:/opt/data"
    ports:
      - "127.0.0.1:8642:8642"
    extra_hosts:
      - "host.docker.internal:host-gateway"
    healthcheck:
      test: ['CMD', 'bash', '-c', 'exec 3<>/dev/tcp/127.0.0.1/8642 && printf ''GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n'' >&3 && head -n1 <&3 | grep -q '' 200 ''']
      interval: 30s
      timeout: 10s
      retries: 3
      start_period: 60s
    stop_grace_period: 60s
    logging:
      driver: json-file
      options:
        max-size: "10m"
        max-file: "3"
EOF
}

api_key() {  # the first API_SERVER_KEY= line's value, or nothing
  local line key=""
  if [ -r "$DATA/.env" ]; then
    while IFS= read -r line; do [[ $line == API_SERVER_KEY=* ]] && { key=${line#API_SERVER_KEY=}; break; }; done <"$DATA/.env"
  fi
  printf '%s' "$key"
}

ENGINE=(curl -sf -m 20 --unix-socket /var/run/docker.sock)  # the Docker engine's API: no Go CLI start

probe() {  # /health, /v1/models without the key, with the key (through stdin, never argv); one curl
  local url=http://127.0.0.1:8642 options=(-s -m 5 -o /dev/null -w '%{http_code} ')
  printf 'Authorization: Bearer %s\n' "$(api_key)" |
    curl "${options[@]}" $url/health -o /dev/null $url/v1/models --next "${options[@]}" -H @- $url/v1/models
}

has_lines() {  # has_lines TEXT LINE...: every LINE is a whole line of TEXT
  local text=$'\n'$1$'\n' line
  shift
  for line; do [[ $text == *$'\n'"$line"$'\n'* ]] || return 1; done
}

config_ok() {
  [ -f "$DATA/config.yaml" ] || return 1
  local wanted=()
  mapfile -t wanted < <(config_text)
  has_lines "$(< "$DATA/config.yaml")" "${wanted[@]}"
}

env_ok() {
  local key
  [ "$(stat -c %u:%g:%a "$DATA/.env" 2>/dev/null)" = "$UID_GID:$UID_GID:600" ] || return 1
  has_lines "$(< "$DATA/.env")" "${ENV_KEYS[@]}" || return 1
  key=$(api_key); [ ${#key} -ge 16 ]
}

floor_check() {  # read-only; prints "need: ..." and exits 10 when something is off
  limits
  local need=() packages container line swap_active=0 fstab=0
  packages=$(dpkg-query -W -f='${db:Status-Abbrev}\n' "${PACKAGES[@]}" 2>/dev/null)
  [ "$(printf '%s\n' "$packages" | { n=0; while read -r s; do [[ $s == ii* ]] && n=$((n + 1)); done; echo $n; })" \
    = "${#PACKAGES[@]}" ] || need+=(packages)
  { [ "$(< /etc/docker/daemon.json)" = "$(daemon_text)" ]; } 2>/dev/null || need+=(daemon.json)
  [ -S /var/run/docker.sock ] && "${ENGINE[@]}" http://d/_ping >/dev/null 2>&1 || need+=(docker-service)
  while read -r line _; do [ "$line" = $SWAP ] && swap_active=1; done </proc/swaps
  { [ "$(stat -c %s $SWAP 2>/dev/null)" = $SWAP_BYTES ] && [ $swap_active = 1 ]; } || need+=(swap)
  while read -r line; do [[ $line =~ ^$SWAP[[:space:]]+none[[:space:]]+swap ]] && fstab=1; done </etc/fstab
  [ $fstab = 1 ] || need+=(fstab)
  { [ "$(< /etc/sysctl.d/60-swappiness.conf)" = "vm.swappiness = $SWAPPINESS" ] &&
    [ "$(< /proc/sys/vm/swappiness)" = $SWAPPINESS ]; } 2>/dev/null || need+=(swappiness)
  "${ENGINE[@]}" "http://d/images/$REF/json" >/dev/null 2>&1 || need+=(image)
  [ "$(stat -c %u:%g:%a $DATA 2>/dev/null)" = "$UID_GID:$UID_GID:700" ] || need+=(data-dir)
  env_ok || need+=(.env)
  config_ok || need+=(config.yaml)
  { [ "$(< $PROJECT/compose.yaml)" = "$(compose_text)" ]; } 2>/dev/null || need+=(compose.yaml)
  container=$("${ENGINE[@]}" http://d/containers/hermes/json 2>/dev/null)
  [[ $container == *'"Running":true'* && $container == *"\"Memory\":$MEMORY_BYTES,"* &&
     $container == *"\"NanoCpus\":$NANO_CPUS,"* && $container == *'"PidsLimit":1024'[,}]* ]] || need+=(container)
  [ "$(probe)" = "200 401 200 " ] || need+=(health)
  if [ ${#need[@]} -eq 0 ]; then echo "converged"; return 0; fi
  echo "need: ${need[*]}"
  return 10
}

step() { printf '%6.1f s  %s\n' "$(( $(date +%s%N) / 1000000 - T0 ))e-3" "$1" >&2; }

floor_apply() {  # stdin: the image archive when the image is missing, else empty
  set -eo pipefail
  T0=$(( $(date +%s%N) / 1000000 ))
  exec 3<&0 </dev/null
  export DEBIAN_FRONTEND=noninteractive
  limits
  mkdir -p /etc/docker
  if [ "$(cat /etc/docker/daemon.json 2>/dev/null)" != "$(daemon_text)" ]; then
    daemon_text > /etc/docker/daemon.json  # before the engine starts: no restart on a fresh host
    ! systemctl is-active -q docker 2>/dev/null || systemctl restart docker
    step "daemon.json"
  fi
  if [ "$(dpkg-query -W -f='${db:Status-Abbrev}\n' "${PACKAGES[@]}" 2>/dev/null | grep -c '^ii' || true)" != "${#PACKAGES[@]}" ]; then
    find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -60 | grep -q . || apt-get update -q >/dev/null
    step "apt-get update"
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null
    step "apt-get install ${PACKAGES[*]}"
  fi
  systemctl is-active -q docker || systemctl enable --now docker
  if ! { [ "$(stat -c %s $SWAP 2>/dev/null)" = $SWAP_BYTES ] && swapon --show=NAME --noheadings | grep -qxF $SWAP; }; then
    swapoff $SWAP 2>/dev/null || true
    rm -f $SWAP
    fallocate -l $SWAP_BYTES $SWAP && chmod 0600 $SWAP && mkswap -q $SWAP >/dev/null && swapon $SWAP
    step "swap file"
  fi
  grep -qE "^$SWAP[[:space:]]+none[[:space:]]+swap" /etc/fstab || echo "$SWAP none swap sw 0 0" >> /etc/fstab
  if [ "$(cat /etc/sysctl.d/60-swappiness.conf 2>/dev/null)" != "vm.swappiness = $SWAPPINESS" ]; then
    echo "vm.swappiness = $SWAPPINESS" > /etc/sysctl.d/60-swappiness.conf
  fi
  sysctl -q -w vm.swappiness=$SWAPPINESS
  if ! docker image inspect "$REF" >/dev/null 2>&1; then
    docker load -q <&3 >/dev/null
    step "docker load (archive streamed over the connection)"
  fi
  exec 3<&-
  mkdir -p $DATA && chown $UID_GID:$UID_GID $DATA && chmod 0700 $DATA
  if ! env_ok; then
    local key kv tmp
    key=$(api_key)
    [ ${#key} -ge 16 ] || key=$(head -c 32 /dev/urandom | base64 | tr -d '/+=\n')
    tmp=$(mktemp "$DATA/.env.XXXXXX")
    { grep -vE "^($(printf '%s|' "${ENV_KEYS[@]%%=*}")API_SERVER_KEY)=" "$DATA/.env" 2>/dev/null || true
      printf '%s\n' "${ENV_KEYS[@]}"; printf 'API_SERVER_KEY=%s\n' "$key"; } > "$tmp"
    chown $UID_GID:$UID_GID "$tmp" && chmod 0600 "$tmp" && mv -T "$tmp" "$DATA/.env"
  fi
  if ! config_ok; then
    if [ -s "$DATA/config.yaml" ]; then
      echo "floor.sh: $DATA/config.yaml exists without the managed keys; the floor does not merge YAML" >&2
      return 1
    fi
    config_text > "$DATA/config.yaml" && chown $UID_GID:$UID_GID "$DATA/config.yaml" && chmod 0600 "$DATA/config.yaml"
  fi
  mkdir -p $PROJECT
  [ "$(cat $PROJECT/compose.yaml 2>/dev/null)" = "$(compose_text)" ] || compose_text > $PROJECT/compose.yaml
  step "files"
  docker compose -f $PROJECT/compose.yaml up -d 2>&1 | tail -n 3 >&2
  step "docker compose up -d"
  local deadline=$(( $(date +%s) + 300 )) answer=""
  until [ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' http://127.0.0.1:8642/health)" = 200 ]; do
    if [ "$(date +%s)" -ge $deadline ]; then
      echo "floor.sh: /health did not answer 200 within 300 s" >&2; docker logs --tail 40 hermes >&2; return 1
    fi
    sleep 1
  done
  answer=$(probe)
  answer=${answer% }
  step "health gate: $answer"
  [ "$answer" = "200 401 200" ] || { echo "floor.sh: health gate failed ($answer; want 200 401 200)" >&2; return 1; }
  echo "applied"
}

remote_script() {  # the variables and functions above, then one call
  declare -p DATA PROJECT SWAP SWAP_BYTES SWAPPINESS UID_GID ENV_KEYS PACKAGES REF MEMORY ENGINE
  declare -f limits daemon_text config_text compose_text api_key probe has_lines config_ok env_ok floor_check step floor_apply
  echo "$1"
}

# --- this machine: one connection, sessions on it ------------------------------------------
control_dir=$(mktemp -d)
ssh_options=(-F /dev/null -p "$PORT" -o BatchMode=yes -o ConnectTimeout=30 -o LogLevel=ERROR
             -o ServerAliveInterval=15 -o ServerAliveCountMax=40 -o ControlPath="$control_dir/master")
[ -z "$KEY" ] || ssh_options+=(-i "$KEY" -o IdentitiesOnly=yes)
if [ -n "$KNOWN_HOSTS" ]; then
  ssh_options+=(-o StrictHostKeyChecking=yes -o UserKnownHostsFile="$KNOWN_HOSTS")
fi
# The first session opens the connection and keeps it (ControlPersist) for the apply session: a
# converged host costs one ssh process and one connection. The log (shown when a session
# fails: a session only sees "exit 255") is the master's.
ssh_options+=(-o ControlMaster=auto -o ControlPersist=yes -E "$control_dir/master.log")
cleanup() {
  ssh "${ssh_options[@]}" -O exit "$USER_NAME@$HOST" 2>/dev/null || true
  rm -rf "$control_dir"
}
trap cleanup EXIT
on_host() {  # run a bash script on the host as a session of the master connection
  local rc=0
  ssh "${ssh_options[@]}" "$USER_NAME@$HOST" "bash -c $(printf '%q' "$1")" || rc=$?
  if [ $rc -eq 255 ]; then
    echo "floor.sh: the SSH session failed (exit 255); the connection's log ends with:" >&2
    tail -n 15 "$control_dir/master.log" >&2
  fi
  return $rc
}

set +e
status=$(on_host "$(remote_script 'floor_check')" </dev/null)
rc=$?
set -e
echo "$status"
[ $rc -eq 0 ] && exit 0
[ $rc -eq 10 ] || { echo "floor.sh: the check failed (exit $rc)" >&2; exit $rc; }
[ $CHECK_ONLY -eq 0 ] || { echo "would change: ${status#need: }"; exit 0; }
case " ${status#need: } " in
  *" image "*)
    [ -f "$ARCHIVE" ] || { echo "floor.sh: the image is missing and --archive is not a file" >&2; exit 2; }
    on_host "$(remote_script 'floor_apply')" <"$ARCHIVE" ;;
  *) on_host "$(remote_script 'floor_apply')" </dev/null ;;
esac
