# Sourced by `make test` / `make bench-*`: points the suite at PostgreSQL and Redis, or
# falls back to SQLite loudly when PostgreSQL cannot be had.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if bash "$here/scripts/services-up.sh"; then
  export DATABASE_URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/leadrelay}
  export CACHE_URL=${TEST_CACHE_URL:-redis://127.0.0.1:6379/1}
  export CELERY_BROKER_URL=${TEST_BROKER_URL:-redis://127.0.0.1:6379/2}
else
  echo "" >&2
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  echo "!!  PostgreSQL is not available: the suite runs on SQLite. CI requires PostgreSQL. !!" >&2
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  echo "" >&2
  export DATABASE_URL=sqlite:///$here/var/test.sqlite3
  export CACHE_URL=${TEST_CACHE_URL:-locmemcache://}
fi
export LEADRELAY_VAR_DIR=${LEADRELAY_VAR_DIR:-$here/var/test}
export OUTBOUND_ALLOWED_NETWORKS=${OUTBOUND_ALLOWED_NETWORKS:-127.0.0.0/8,::1/128}
export DJANGO_ALLOW_ASYNC_UNSAFE=true
# A fixed key for tests and benchmarks only (production sets its own).
export INTEGRATION_SECRET_KEYS=${INTEGRATION_SECRET_KEYS:-Rd_Bu4hd31S2NzmXZj3EK_LqbWhRGLT6JaYN7AXTL_U=}
