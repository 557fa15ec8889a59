#!/usr/bin/env bash
# Start (or reuse) a private PostgreSQL server for the test suite and print the line that exports
# its URL, so callers do:   eval "$(.ci/start-postgres.sh)"
#
# Uses Debian's postgresql packages (installs them with apt-get when missing and running as root),
# a private data directory initialised with initdb and started with pg_ctl as the `postgres`
# user (initdb refuses root), listening on 127.0.0.1 only. Creates a password-authenticated
# role that may create databases (each test gets its own) and one database. Idempotent: a
# server already running from the same data directory is reused.
#
# Environment (all optional): STEMBEAM_PG_DATA (data directory, default /tmp/stembeam-pg),
# STEMBEAM_PG_PORT (default 5432; the next free port up to 5439 when taken by another server),
# STEMBEAM_PG_USER / STEMBEAM_PG_PASSWORD / STEMBEAM_PG_DB (default stembeam/stembeam/stembeam_test).
set -euo pipefail

data=${STEMBEAM_PG_DATA:-/tmp/stembeam-pg}
port=${STEMBEAM_PG_PORT:-5432}
user=${STEMBEAM_PG_USER:-stembeam}
password=${STEMBEAM_PG_PASSWORD:-stembeam}
db=${STEMBEAM_PG_DB:-stembeam_test}

log() { echo "start-postgres: $*" >&2; }

bindir() { find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1; }

bin=$(bindir)
if [ -z "$bin" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "PostgreSQL is not installed; run: sudo apt-get install -y postgresql"
    exit 1
  fi
  log "installing Debian's postgresql"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
  bin=$(bindir)
fi

# Run a command as the server's owner: `postgres` when we are root, else ourselves.
if [ "$(id -u)" -eq 0 ]; then
  owner=postgres
  as_owner() { runuser -u postgres -- "$@"; }
else
  owner=$(id -un)
  as_owner() { "$@"; }
fi

if [ ! -s "$data/PG_VERSION" ]; then
  log "initdb $data"
  mkdir -p "$data"
  chown "$owner" "$data"
  chmod 700 "$data"
  as_owner "$bin/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >&2
fi

if as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
  port=$(sed -n 4p "$data/postmaster.pid")
  log "reusing the server already running from $data on port $port"
else
  last=$((port + 7))
  while "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" || \
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    [ "$port" -lt "$last" ] || { log "no free port up to $last"; exit 1; }
    port=$((port + 1))
  done
  log "starting PostgreSQL on 127.0.0.1:$port from $data"
  as_owner "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $data -c max_connections=200" >&2
fi

psql_su() { as_owner "$bin/psql" -h "$data" -p "$port" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }

if [ "$(psql_su -c "select 1 from pg_roles where rolname = '$user'")" != 1 ]; then
  psql_su -c "create role \"$user\" login createdb password '$password'" >&2
fi
if [ "$(psql_su -c "select 1 from pg_database where datname = '$db'")" != 1 ]; then
  psql_su -c "create database \"$db\" owner \"$user\"" >&2
fi

echo "export STEMBEAM_TEST_POSTGRES_URL=postgresql://$user:$password@127.0.0.1:$port/$db"
