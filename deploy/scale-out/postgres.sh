#!/usr/bin/env bash
# postgres.sh DATA_DIR PORT DB: a PostgreSQL cluster for the MLflow server from Debian's package (`make
# servers`): created on first use (trust auth on loopback, user llmops), database DB made, then the server
# runs in the foreground. As root the cluster belongs to the package's postgres user.
set -euo pipefail
data=$(realpath -m "$1"); port=$2; db=$3
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as=(); if [ "$(id -u)" = 0 ]; then as=(runuser -u postgres --); fi
if [ ! -s "$data/PG_VERSION" ]; then
  mkdir -p "$data"; [ ${#as[@]} -eq 0 ] || chown postgres "$data"
  "${as[@]}" "$bin/initdb" -D "$data" -U llmops --auth=trust -E UTF8 >/dev/null
fi
"${as[@]}" "$bin/postgres" -D "$data" -p "$port" -h 127.0.0.1 -k "$data" &
pid=$!
# stopped through pg_ctl (fast: MLflow's open connections do not hold it up; as root $pid is runuser), on
# Ctrl-C, TERM, or a failed step below
trap '"${as[@]}" "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || kill -9 $pid 2>/dev/null || true; wait $pid || true' EXIT
trap 'exit 0' INT TERM
until "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U llmops; do
  kill -0 $pid 2>/dev/null || { echo "postgres exited during start-up" >&2; exit 1; }
  sleep 0.5
done
"$bin/psql" -h 127.0.0.1 -p "$port" -U llmops -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" \
  | grep -q 1 || "$bin/createdb" -h 127.0.0.1 -p "$port" -U llmops "$db"
wait $pid
