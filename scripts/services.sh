#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis answer on loopback (5432 / 6379) for
# `make run` and `make test`: reuses servers already listening, otherwise
# starts the machine's own (Debian packages, installed if missing) with their
# data under the git-ignored .dev/ folder. With --browser it also makes sure
# Debian's chromium is installed for the browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV="$PWD/.dev"
PGPORT=${PGPORT:-5432}
REDIS_PORT=${REDIS_PORT:-6379}

log() { printf '[services] %s\n' "$*" >&2; }

apt_install() {
  if ! command -v apt-get >/dev/null; then
    log "cannot install $*: no apt-get; install it by hand"; exit 1
  fi
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  log "installing $* (Debian packages)"
  if [ ! -f "$DEV/.apt-updated" ]; then
    $sudo apt-get update -qq
    mkdir -p "$DEV" && touch "$DEV/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

pg_ready() { pg_isready -q -h 127.0.0.1 -p "$PGPORT" 2>/dev/null; }

ensure_postgres() {
  command -v pg_isready >/dev/null || apt_install postgresql postgresql-client
  if pg_ready; then log "PostgreSQL: reusing 127.0.0.1:$PGPORT"; return; fi
  # The machine's own cluster, if one is configured but stopped.
  local ver name port
  if command -v pg_lsclusters >/dev/null &&
     read -r ver name port _ < <(pg_lsclusters -h 2>/dev/null | awk -v p="$PGPORT" '$3 == p' | head -1) && [ -n "$ver" ]; then
    log "PostgreSQL: starting cluster $ver/$name"
    pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start || true
    for _ in $(seq 1 30); do pg_ready && return; sleep 0.5; done
  fi
  # Otherwise a private cluster under .dev/pg (trust auth on loopback only).
  local bindir
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$bindir" ] || apt_install postgresql
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  local data="$DEV/pg" run=()
  mkdir -p "$DEV"
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$DEV" 2>/dev/null || true
    run=(runuser -u postgres --)
  fi
  if [ ! -f "$data/PG_VERSION" ]; then
    log "PostgreSQL: creating a private cluster in $data"
    "${run[@]}" "$bindir/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  log "PostgreSQL: starting the private cluster on 127.0.0.1:$PGPORT"
  "${run[@]}" "$bindir/pg_ctl" -D "$data" -l "$data.log" -w \
    -o "-p $PGPORT -c listen_addresses=127.0.0.1 -k /tmp -c fsync=off" start >/dev/null
  pg_ready || { log "PostgreSQL did not start; see $data.log"; exit 1; }
}

ensure_redis() {
  command -v redis-cli >/dev/null || apt_install redis-server redis-tools
  if [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; then
    log "Redis: reusing 127.0.0.1:$REDIS_PORT"; return
  fi
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p "$DEV/redis"
  log "Redis: starting a private server on 127.0.0.1:$REDIS_PORT"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$DEV/redis" --logfile "$DEV/redis.log"
  for _ in $(seq 1 20); do
    [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && return
    sleep 0.25
  done
  log "Redis did not start; see $DEV/redis.log"; exit 1
}

ensure_database() {
  local db=$1
  if ! psql -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1; then
    log "PostgreSQL: creating database $db"
    psql -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -qc "CREATE DATABASE $db" >/dev/null
  fi
}

ensure_browser() {
  if command -v chromium >/dev/null; then return; fi
  apt_install chromium
}

ensure_postgres
ensure_redis
for arg in "$@"; do
  case "$arg" in
    --browser) ensure_browser ;;
    --db=*) ensure_database "${arg#--db=}" ;;
    *) log "unknown argument $arg"; exit 2 ;;
  esac
done
