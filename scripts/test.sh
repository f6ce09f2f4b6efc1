#!/usr/bin/env bash
# The project's single test command (README, CI): formatting, lints, the binaries, and every
# test of the workspace, unit to end-to-end, on SQLite and on Postgres.
#
#   scripts/test.sh
#
# Postgres: the tests use PHOENIX_TEST_POSTGRES_URL (default
# postgres://postgres@127.0.0.1:5432/postgres, trust auth) and create a fresh database per
# test. If Postgres is installed but stopped, this script starts it. If it stays
# unreachable, the Postgres tests are skipped with a warning, except under CI=true (or
# PHOENIX_TEST_REQUIRE_POSTGRES=1), where that is an error.
#
# Everything is built once, in the dev profile: clippy checks, `cargo build` produces the
# binaries the end-to-end tests start, and `cargo test` reuses that build.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export PHOENIX_TEST_POSTGRES_URL="${PHOENIX_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
if [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; then
    export PHOENIX_TEST_REQUIRE_POSTGRES=1
    # Incremental compilation only costs time and disk on a one-off build.
    export CARGO_INCREMENTAL=0
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

started=$SECONDS
step_name=""
steps_done=0
postgres_status="not checked"

step() {
    step_name="$1"
    printf '\n==> [%s] %s\n' "$(elapsed)" "$1"
}

elapsed() {
    local s=$((SECONDS - started))
    printf '%dm%02ds' $((s / 60)) $((s % 60))
}

on_exit() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        printf '\nscripts/test.sh: FAILED at step "%s" after %s (exit %d)\n' "$step_name" "$(elapsed)" "$rc" >&2
    fi
}
trap on_exit EXIT

require_tool() {
    local what="$1" hint="$2"
    shift 2
    if ! "$@" >/dev/null 2>&1; then
        echo "scripts/test.sh: $what is not available; $hint" >&2
        exit 1
    fi
}

# --- Postgres ------------------------------------------------------------------------------

postgres_ready() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -d "$PHOENIX_TEST_POSTGRES_URL" -t 3
    elif command -v psql >/dev/null 2>&1; then
        psql "$PHOENIX_TEST_POSTGRES_URL" -Atqc 'SELECT 1' >/dev/null 2>&1
    else
        # Neither client is installed: try the TCP port of the default URL.
        (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null
    fi
}

postgres_start() {
    local versions
    versions=$(ls /etc/postgresql 2>/dev/null || true)
    if [[ -z "$versions" ]] && ! command -v pg_ctlcluster >/dev/null 2>&1; then
        echo "Postgres does not seem to be installed (no /etc/postgresql)."
        return 1
    fi
    echo "Postgres is not answering; starting it."
    local version
    for version in $versions; do
        pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>&1 || true
    done
    if ! postgres_ready; then
        service postgresql start 2>&1 || true
    fi
    local i
    for i in $(seq 1 30); do
        postgres_ready && return 0
        sleep 1
    done
    return 1
}

postgres_can_login() {
    # pg_isready does not authenticate; check that the URL works as it is (trust auth).
    if command -v psql >/dev/null 2>&1; then
        psql "$PHOENIX_TEST_POSTGRES_URL" -Atqc 'SELECT 1' >/dev/null
    fi
}

check_postgres() {
    local problem
    step "postgres: $PHOENIX_TEST_POSTGRES_URL"
    if postgres_ready || postgres_start; then
        if postgres_can_login; then
            echo "Postgres is up; the Postgres tests will run."
            postgres_status="used"
            return 0
        fi
        problem="Postgres answers but refuses the login in PHOENIX_TEST_POSTGRES_URL (the tests expect trust auth for 127.0.0.1, or a URL with a password)"
    else
        problem="Postgres is unreachable at $PHOENIX_TEST_POSTGRES_URL"
    fi
    if [[ "${PHOENIX_TEST_REQUIRE_POSTGRES:-}" == "1" ]]; then
        echo "ERROR: $problem, and Postgres is required here (CI=true or PHOENIX_TEST_REQUIRE_POSTGRES=1)." >&2
        echo "ERROR: install and start PostgreSQL with trust auth on 127.0.0.1:5432, or set PHOENIX_TEST_POSTGRES_URL." >&2
        exit 1
    fi
    echo "WARNING: $problem: the Postgres tests will be SKIPPED (set PHOENIX_TEST_POSTGRES_URL to run them)." >&2
    postgres_status="SKIPPED"
}

# --- Steps ---------------------------------------------------------------------------------

# Postgres first: under CI a missing database fails the run in seconds, not after the build.
check_postgres
steps_done=$((steps_done + 1))

step "format: cargo fmt --all -- --check"
require_tool "rustfmt" "install it with: rustup component add rustfmt" cargo fmt --version
cargo fmt --all -- --check
steps_done=$((steps_done + 1))

step "lint: cargo clippy --workspace --all-targets --locked -- -D warnings"
require_tool "clippy" "install it with: rustup component add clippy" cargo clippy --version
cargo clippy --workspace --all-targets --locked -- -D warnings
steps_done=$((steps_done + 1))

step "build: cargo build --workspace --locked --bins"
cargo build --workspace --locked --bins
steps_done=$((steps_done + 1))

step "test: cargo test --workspace --locked"
cargo test --workspace --locked
steps_done=$((steps_done + 1))

# --- Benchmark (quick mode) ---------------------------------------------------------------
# Checks that the benchmark runs end to end against the real server on both backends, with
# its baselines (pgbench needs the Postgres client tools); asserts no timing. The full run
# is documented in docs/performance.md.
bench_backend="both"
if [[ "$postgres_status" != "used" ]] || ! command -v pgbench >/dev/null 2>&1; then
    bench_backend="sqlite"
    echo "WARNING: the benchmark runs on SQLite only (its Postgres run needs Postgres and pgbench, package postgresql-client)." >&2
fi
step "bench: phoenix-bench --quick --backend $bench_backend"
"${CARGO_TARGET_DIR:-target}/debug/phoenix-bench" --quick --backend "$bench_backend" --out "${TMPDIR:-/tmp}/phoenix-bench-quick"
steps_done=$((steps_done + 1))

# --- The operator's walk-through ------------------------------------------------------------
# docs/operations.md "First deployment", run as written by scripts/operations-walkthrough.sh
# (two servers over TLS, SQLite and Postgres, backup and restore). Needs Postgres and its
# client tools, sqlite3, openssl and curl; skipped with a warning where one is missing, an
# error under CI.
missing=""
for tool in openssl curl sqlite3 pg_dump pg_restore createdb dropdb; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
if [[ "$postgres_status" == "used" && -z "$missing" ]]; then
    step "walkthrough: scripts/operations-walkthrough.sh (docs/operations.md as written)"
    bash scripts/operations-walkthrough.sh
    steps_done=$((steps_done + 1))
elif [[ "${PHOENIX_TEST_REQUIRE_POSTGRES:-}" == "1" ]]; then
    echo "scripts/test.sh: the operations walk-through needs Postgres and:${missing:- (all present)}" >&2
    exit 1
else
    echo "WARNING: the operations walk-through is skipped (needs Postgres and:${missing:- (all present)})." >&2
fi

# --- Fuzzing ---------------------------------------------------------------------------
# Every target in fuzz/ (its own workspace: cargo-fuzz on the stable toolchain with
# RUSTC_BOOTSTRAP=1), built once and smoke-run for a bounded number of executions, two at
# a time; installs cargo-fuzz if missing. See scripts/fuzz-smoke.sh and fuzz/README.md.
step "fuzz: scripts/fuzz-smoke.sh (every fuzz target, 50000 executions each)"
bash scripts/fuzz-smoke.sh
steps_done=$((steps_done + 1))

step_name="summary"
printf '\nscripts/test.sh: all %d steps passed in %s (postgres tests: %s)\n' "$steps_done" "$(elapsed)" "$postgres_status"
