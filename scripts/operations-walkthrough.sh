#!/usr/bin/env bash
# Follows docs/operations.md, section "First deployment", as written: runs each ```sh block
# of that section in order, in one bash process, in a fresh temporary directory, with the
# binaries of target/debug first on PATH (build them first:
# cargo build -p phoenix-server -p phoenix-client --bins). Needs curl, sqlite3, pg_dump,
# pg_restore, createdb, dropdb, openssl and Postgres at 127.0.0.1:5432 (user postgres, trust), and
# ports 18080 and 18081 free. Exit status 0 only if every command succeeded.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
doc="$root/docs/operations.md"
work="$(mktemp -d -t phoenix-walkthrough-XXXXXX)"
script="$work/walkthrough.sh"

# The section's sh blocks, in order.
awk '
  /^## First deployment/ { inside = 1; next }
  /^## / && inside { exit }
  inside && /^```sh$/ { block = 1; next }
  inside && /^```$/ && block { block = 0; print ""; next }
  block { print }
' "$doc" > "$script"
if [ ! -s "$script" ]; then
  echo "walkthrough: no sh blocks found in $doc" >&2
  exit 1
fi
for port in 18080 18081; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "walkthrough: port $port is in use" >&2
    exit 1
  fi
done
dropdb -h 127.0.0.1 -U postgres --if-exists phoenix_b

cleanup() {
  for pid_file in "$work"/a.pid "$work"/b.pid; do
    [ -f "$pid_file" ] && kill "$(cat "$pid_file")" 2>/dev/null || true
  done
  dropdb -h 127.0.0.1 -U postgres --if-exists phoenix_b || true
  if [ "${KEEP:-0}" = 1 ]; then echo "walkthrough: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

export PATH="${CARGO_TARGET_DIR:-$root/target}/debug:$PATH"
export PHOENIX_LOG=warn,phoenix_server=info
echo "walkthrough: running $(grep -c . "$script") lines from $doc in $work"
cd "$work"
if bash -euo pipefail -x "$script" > "$work/output.log" 2>&1; then
  echo "walkthrough: every command succeeded"
  tail -n 30 "$work/output.log"
else
  status=$?
  echo "walkthrough: failed (exit $status); the last lines:" >&2
  tail -n 40 "$work/output.log" >&2
  echo "--- a.log" >&2; tail -n 20 "$work/a.log" >&2 || true
  echo "--- b.log" >&2; tail -n 20 "$work/b.log" >&2 || true
  exit "$status"
fi
