# Sourced by .ci/run: makes sure a PostgreSQL server answers on 127.0.0.1:5432 and exports
# DATABASE_URL for the PostgreSQL tests, or fails. A machine without PostgreSQL gets it from
# Debian's packages (needs root), like the local services the README lists.
pg_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! command -v pg_isready >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "PostgreSQL is not installed: installing it from Debian's packages"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
fi
if ! pg_up && command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "PostgreSQL is down: starting it"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
if ! pg_up; then
  echo "PostgreSQL does not answer on 127.0.0.1:5432: the PostgreSQL tests cannot run" >&2
  exit 1
fi
# A fresh cluster has no `test` database and may not trust local TCP logins yet.
if ! psql "$pg_url" -Atc 'select 1' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    su postgres -c "psql -Atc \"select 1 from pg_database where datname = 'test'\"" | grep -q 1 \
      || su postgres -c "createdb test" || true
  fi
fi
if ! psql "$pg_url" -Atc 'select 1' >/dev/null 2>&1; then
  echo "cannot log in to $pg_url: the PostgreSQL tests cannot run" >&2
  exit 1
fi
export DATABASE_URL="$pg_url"
# Schemas left by earlier test runs (each test case makes its own).
PGOPTIONS="-c client_min_messages=warning" psql "$DATABASE_URL" -Atq <<'SQL' >/dev/null
DO $$ DECLARE s text; BEGIN
  FOR s IN SELECT nspname FROM pg_namespace WHERE nspname LIKE 'wl\_test\_%' LOOP
    EXECUTE format('DROP SCHEMA %I CASCADE', s);
  END LOOP;
END $$;
SQL
echo "PostgreSQL tests will run against $DATABASE_URL"
# The server is this machine's own: the restart-under-load test may restart it.
if command -v pg_ctlcluster >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && [ -d /etc/postgresql ]; then
  export WINDLASS_TEST_PG_RESTART=1
  echo "the PostgreSQL restart-under-load test will run"
fi
