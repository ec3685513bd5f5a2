#!/usr/bin/env bash
# Run a throw-away Synapse homeserver for Newt's end-to-end tests and demo.
#
#   scripts/synapse.sh install                    create/refresh the cached venv
#   scripts/synapse.sh start DIR                  configure + start; prints the base URL
#   scripts/synapse.sh stop DIR                   stop the server started in DIR (idempotent)
#   scripts/synapse.sh register DIR USER PASSWORD register @USER:localhost; prints the user id
#
# Environment:
#   NEWT_CACHE               cache dir for the venv (default: <repo>/.cache, gitignored)
#   NEWT_SYNAPSE_WATCH_PID   if set at `start`, a small watcher stops the server as soon
#                            as that process exits (used by the Rust test harness so a
#                            crashed/killed test process never leaves a server behind)
#   NEWT_SYNAPSE_PYTHON      python used to create the venv (default: python3)
#   NEWT_SYNAPSE_PORT        port to try first at `start` (default: a free one; if it is
#                            taken, another free port is picked)
set -euo pipefail

SYNAPSE_VERSION=1.163.2
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
NEWT_CACHE=${NEWT_CACHE:-$REPO_ROOT/.cache}
VENV=$NEWT_CACHE/synapse-venv
VENV_PY=$VENV/bin/python
STAMP=$VENV/.newt-synapse-version
START_TIMEOUT=60
STOP_TIMEOUT=10

log() { echo "synapse.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2
    exit "${1:-2}"
}

# ---------------------------------------------------------------- install

venv_ok() {
    [[ -x $VENV_PY && -f $STAMP && $(cat "$STAMP") == "$SYNAPSE_VERSION" ]] || return 1
    local v
    v=$("$VENV_PY" -c 'import importlib.metadata as m; print(m.version("matrix-synapse"))' 2>/dev/null) || return 1
    [[ $v == "$SYNAPSE_VERSION" ]]
}

make_venv() {
    local py=${NEWT_SYNAPSE_PYTHON:-python3}
    command -v "$py" >/dev/null || die "$py not found (Synapse needs Python >= 3.10)"
    "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
        || die "$py is $("$py" --version 2>&1); Synapse $SYNAPSE_VERSION needs Python >= 3.10"
    rm -rf "$VENV"
    if ! "$py" -m venv "$VENV" >&2; then
        log "'$py -m venv' failed; installing python3-venv with apt-get"
        rm -rf "$VENV"
        if command -v apt-get >/dev/null; then
            local sudo=""
            [[ $(id -u) -eq 0 ]] || sudo="sudo"
            $sudo apt-get update >&2 || true
            local pyver
            pyver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y python3-venv >&2 \
                || DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "python${pyver}-venv" >&2 \
                || die "could not install python3-venv"
        else
            die "'$py -m venv' failed and apt-get is not available"
        fi
        "$py" -m venv "$VENV" >&2 || die "'$py -m venv' still fails"
    fi
}

cmd_install() {
    mkdir -p "$NEWT_CACHE"
    # Several test processes may call `start` (and so `install`) at once.
    exec 9>"$NEWT_CACHE/synapse-install.lock"
    flock 9
    if venv_ok; then
        log "Synapse $SYNAPSE_VERSION already installed in $VENV"
        exec 9>&-
        return 0
    fi
    log "installing Synapse $SYNAPSE_VERSION into $VENV"
    if ! { [[ -x $VENV_PY ]] && "$VENV_PY" -c 'import sys' 2>/dev/null; }; then
        make_venv
    fi
    rm -f "$STAMP"
    "$VENV_PY" -m pip install --disable-pip-version-check --quiet \
        --only-binary=:all: "matrix-synapse==$SYNAPSE_VERSION" >&2 \
        || die "pip install matrix-synapse==$SYNAPSE_VERSION failed"
    echo "$SYNAPSE_VERSION" >"$STAMP"
    venv_ok || die "Synapse installed but the venv check still fails"
    log "installed Synapse $SYNAPSE_VERSION"
    exec 9>&-
}

# ---------------------------------------------------------------- helpers

abs_dir() {
    mkdir -p "$1"
    (cd "$1" && pwd)
}

# Is PID alive (a zombie counts as dead: PID 1 here may not reap orphans)?
pid_alive() {
    local pid=$1 state
    [[ -n $pid ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z && $state != X ]]
}

# Is PID alive and a Synapse process (guards against PID reuse)?
is_synapse_pid() {
    pid_alive "$1" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q 'synapse.app.homeserver'
}

free_port() {
    python3 - <<'PY'
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

random_token() {
    python3 -c 'import secrets; print(secrets.token_hex(24))'
}

write_log_config() {
    local dir=$1
    cat >"$dir/log.config" <<YAML
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
filters:
  context:
    (): synapse.logging.context.LoggingContextFilter
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: $dir/homeserver.log
    encoding: utf8
    filters: [context]
loggers:
  synapse.storage.SQL:
    level: WARNING
  twisted:
    level: WARNING
root:
  level: INFO
  handlers: [file]
disable_existing_loggers: false
YAML
}

write_config() {
    local dir=$1 port=$2 secret=$3
    local big='{per_second: 100000, burst_count: 100000}'
    cat >"$dir/homeserver.yaml" <<YAML
# Generated by scripts/synapse.sh for Newt's tests. Throw-away server: do not reuse.
server_name: localhost
public_baseurl: http://127.0.0.1:$port/
report_stats: false
listeners:
  - port: $port
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: $dir/homeserver.db
log_config: $dir/log.config
media_store_path: $dir/media_store
# Synapse generates this key itself on first start if the file is missing.
signing_key_path: $dir/localhost.signing.key
macaroon_secret_key: "$(random_token)"
form_secret: "$(random_token)"
registration_shared_secret: "$secret"
enable_registration: true
enable_registration_without_verification: true
bcrypt_rounds: 4
# no outbound traffic
federation_domain_whitelist: []
trusted_key_servers: []
suppress_key_server_warning: true
url_preview_enabled: false
enable_metrics: false
caches:
  sync_response_cache_duration: 0
background_updates:
  sleep_enabled: false
experimental_features:
  msc3814_enabled: true
# rate limits: effectively off
rc_message: $big
rc_registration: $big
rc_registration_token_validity: $big
rc_login:
  address: $big
  account: $big
  failed_attempts: $big
rc_admin_redaction: $big
rc_joins:
  local: $big
  remote: $big
rc_joins_per_room: $big
rc_3pid_validation: $big
rc_invites:
  per_room: $big
  per_user: $big
  per_issuer: $big
rc_third_party_invite: $big
rc_room_creation: $big
rc_key_requests: $big
rc_media_create: $big
rc_federation:
  window_size: 1000
  sleep_limit: 100000
  sleep_delay: 0
  reject_limit: 100000
  concurrent: 100000
rc_presence:
  per_user: $big
rc_delayed_event_mgmt: $big
rc_reports: $big
rc_user_directory: $big
rc_profile: $big
YAML
}

# ---------------------------------------------------------------- start

cmd_start() {
    [[ $# -eq 1 ]] || usage
    local dir
    dir=$(abs_dir "$1")
    if [[ -f $dir/synapse.pid ]] && is_synapse_pid "$(cat "$dir/synapse.pid")"; then
        die "a Synapse is already running for $dir (pid $(cat "$dir/synapse.pid"))"
    fi
    venv_ok || cmd_install

    local secret
    secret=$(random_token)
    echo "$secret" >"$dir/registration_shared_secret"
    mkdir -p "$dir/media_store"
    write_log_config "$dir"

    local attempt port pid url
    for attempt in 1 2 3 4 5; do
        if [[ $attempt -eq 1 && -n ${NEWT_SYNAPSE_PORT:-} ]]; then
            port=$NEWT_SYNAPSE_PORT
        else
            port=$(free_port)
        fi
        url="http://127.0.0.1:$port"
        write_config "$dir" "$port" "$secret"
        : >"$dir/homeserver.log"
        # stdin/stdout/stderr must not be inherited: whoever runs `start` (a test harness
        # reading our stdout) would otherwise wait for the server to exit.
        "$VENV_PY" -m synapse.app.homeserver -c "$dir/homeserver.yaml" \
            </dev/null >"$dir/synapse.out" 2>&1 &
        pid=$!
        echo "$pid" >"$dir/synapse.pid"
        echo "$url" >"$dir/url"
        # watch from launch on, so that a caller killed during startup leaves nothing
        start_watcher "$dir" "$pid"

        case $(wait_ready "$dir" "$pid" "$port") in
        ready)
            echo "$url"
            return 0
            ;;
        port-in-use)
            log "port $port was taken (attempt $attempt), retrying with another port"
            stop_pid "$pid"
            continue
            ;;
        *)
            stop_pid "$pid"
            rm -f "$dir/synapse.pid"
            log "Synapse failed to start in $dir; last lines of its output and log:"
            tail -n 30 "$dir/synapse.out" >&2 || true
            tail -n 40 "$dir/homeserver.log" >&2 || true
            exit 1
            ;;
        esac
    done
    rm -f "$dir/synapse.pid"
    die "could not find a free port after 5 attempts"
}

# Prints "ready", "port-in-use" or "failed".
wait_ready() {
    local dir=$1 pid=$2 port=$3 deadline code
    deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! pid_alive "$pid"; then
            if grep -qiE 'address already in use|CannotListenError' "$dir/synapse.out" "$dir/homeserver.log" 2>/dev/null; then
                echo port-in-use
            else
                echo failed
            fi
            return 0
        fi
        # Only trust the HTTP answer once *our* process says it listens on that port:
        # a concurrently started server could own the port.
        if grep -q "Synapse now listening on TCP port $port" "$dir/homeserver.log" 2>/dev/null; then
            code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
                "http://127.0.0.1:$port/_matrix/client/versions" 2>/dev/null || true)
            if [[ $code == 200 ]]; then
                echo ready
                return 0
            fi
        fi
        sleep 0.2
    done
    log "Synapse did not answer within ${START_TIMEOUT}s"
    echo failed
}

# Stop the server once the process NEWT_SYNAPSE_WATCH_PID is gone.
start_watcher() {
    local dir=$1 pid=$2 watch=${NEWT_SYNAPSE_WATCH_PID:-}
    [[ -n $watch ]] || return 0
    (
        trap '' HUP
        while pid_alive "$watch" && pid_alive "$pid"; do sleep 0.5; done
        if pid_alive "$pid"; then stop_pid "$pid"; fi
    ) </dev/null >/dev/null 2>&1 &
    echo $! >"$dir/watcher.pid"
}

# ---------------------------------------------------------------- stop

stop_pid() {
    local pid=$1 deadline
    is_synapse_pid "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    deadline=$((SECONDS + STOP_TIMEOUT))
    while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if pid_alive "$pid"; then
        log "Synapse (pid $pid) did not stop within ${STOP_TIMEOUT}s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 5))
        while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    fi
}

cmd_stop() {
    [[ $# -eq 1 ]] || usage
    local dir=$1 pid wpid
    [[ -d $dir ]] || return 0
    if [[ -f $dir/watcher.pid ]]; then
        wpid=$(cat "$dir/watcher.pid")
        # only kill it if it is still a bash process (PID reuse)
        if pid_alive "$wpid" && grep -q bash "/proc/$wpid/comm" 2>/dev/null; then
            kill "$wpid" 2>/dev/null || true
        fi
        rm -f "$dir/watcher.pid"
    fi
    if [[ -f $dir/synapse.pid ]]; then
        pid=$(cat "$dir/synapse.pid")
        stop_pid "$pid"
        if pid_alive "$pid" && is_synapse_pid "$pid"; then
            die "could not stop Synapse (pid $pid)"
        fi
        rm -f "$dir/synapse.pid"
    fi
}

# ---------------------------------------------------------------- register

cmd_register() {
    [[ $# -eq 3 ]] || usage
    local dir=$1
    [[ -f $dir/url && -f $dir/registration_shared_secret ]] \
        || die "no server started in $dir (missing url / registration_shared_secret)"
    python3 - "$(cat "$dir/url")" "$(cat "$dir/registration_shared_secret")" "$2" "$3" <<'PY'
import hashlib, hmac, json, sys, urllib.error, urllib.request

base, secret, user, password = sys.argv[1:5]
endpoint = base.rstrip("/") + "/_synapse/admin/v1/register"

def call(req):
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, {"error": body.decode(errors="replace")}

status, body = call(endpoint)
if status != 200:
    sys.exit(f"register: GET nonce failed: {status} {body}")
nonce = body["nonce"]
mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
mac.update(b"\x00".join([nonce.encode(), user.encode(), password.encode(), b"notadmin"]))
payload = {"nonce": nonce, "username": user, "password": password,
           "admin": False, "mac": mac.hexdigest()}
req = urllib.request.Request(endpoint, data=json.dumps(payload).encode(),
                             headers={"Content-Type": "application/json"}, method="POST")
status, body = call(req)
if status == 200:
    print(body["user_id"])
elif status == 400 and body.get("errcode") == "M_USER_IN_USE":
    print(f"@{user}:localhost")
else:
    sys.exit(f"register: POST failed: {status} {body}")
PY
}

# ---------------------------------------------------------------- main

[[ $# -ge 1 ]] || usage
cmd=$1
shift
case $cmd in
install) [[ $# -eq 0 ]] || usage; cmd_install ;;
start) cmd_start "$@" ;;
stop) cmd_stop "$@" ;;
register) cmd_register "$@" ;;
-h | --help | help) usage 0 ;;
*) usage ;;
esac
