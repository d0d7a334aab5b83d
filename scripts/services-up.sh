#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer at their usual local addresses. When one is
# installed but not answering, start it (the machine's own cluster first, else a
# throwaway cluster with fsync off in var/). Prints what it did; exit 1 when PostgreSQL
# cannot be had (the caller then falls back loudly).
set -u
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
REDIS_PORT=${REDIS_PORT:-6379}
here=$(cd "$(dirname "$0")/.." && pwd)

pg_up() { pg_isready -q -h "$PGHOST" -p "$PGPORT" 2>/dev/null; }
redis_up() { (exec 3<>/dev/tcp/127.0.0.1/"$REDIS_PORT" && printf 'PING\r\n' >&3 && timeout 2 head -c 5 <&3 | grep -q PONG) 2>/dev/null; }

if ! pg_up && command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "services: PostgreSQL not answering; starting the installed cluster" >&2
  for v in $(ls /etc/postgresql 2>/dev/null); do
    pg_ctlcluster --skip-systemctl-redirect "$v" main start >/dev/null 2>&1 || true
  done
  for _ in $(seq 1 20); do pg_up && break; sleep 0.25; done
fi
if ! pg_up; then
  initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$initdb" ]; then
    bindir=$(dirname "$initdb")
    data="$here/var/pg"
    echo "services: starting a throwaway PostgreSQL cluster in $data" >&2
    if [ ! -f "$data/PG_VERSION" ]; then
      mkdir -p "$data"
      [ "$(id -u)" = 0 ] && chown -R postgres "$data" 2>/dev/null
      run() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
      run "$bindir/initdb -D '$data' -A trust -U postgres" >/dev/null
    fi
    run() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
    run "$bindir/pg_ctl -D '$data' -o '-F -p $PGPORT -c listen_addresses=127.0.0.1' -l '$data/log' start" >/dev/null
    for _ in $(seq 1 40); do pg_up && break; sleep 0.25; done
  fi
fi
if ! redis_up && command -v redis-server >/dev/null 2>&1; then
  echo "services: Redis not answering; starting redis-server" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /tmp --logfile /tmp/leadrelay-redis.log >/dev/null
  for _ in $(seq 1 20); do redis_up && break; sleep 0.25; done
fi
redis_up || echo "services: Redis is not available" >&2
pg_up
