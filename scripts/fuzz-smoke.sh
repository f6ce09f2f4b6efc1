#!/usr/bin/env bash
# Fuzz smoke run (issue 5), called by scripts/test.sh after `cargo test`: build every
# target in fuzz/ once, then run each for a bounded number of executions, starting from
# a copy of its committed seed corpus. Any crash fails the run (cargo fuzz exits non-zero
# and leaves the input in fuzz/artifacts/<target>/).
#
#   scripts/fuzz-smoke.sh                 # every target
#   scripts/fuzz-smoke.sh decode_as csr   # some targets
#
# Settings (environment):
#   PHOENIX_FUZZ_RUNS      executions per target (default 50000); a target that stops
#                          short of them (time cap) fails the run
#   PHOENIX_FUZZ_MAX_TIME  seconds per target at most (default 900: a safety cap; the
#                          stateful targets need 3 to 5 minutes for 50000 executions on
#                          the CI machine: stateful_as 269 s, stateful_ds 257 s,
#                          stateful_qs 180 s measured)
#   PHOENIX_FUZZ_JOBS      targets run at once (default 2)
#   PHOENIX_SKIP_FUZZ=1    skip the whole step (local use only; CI never sets it)
#
# cargo-fuzz passes nightly-only flags to rustc; RUSTC_BOOTSTRAP=1 makes the stable
# toolchain accept them. The build uses no sanitizer (`-s none`: the code under test is
# safe Rust, and ASan triples build and run time) and 16 codegen units per crate instead
# of cargo-fuzz's default of one (a much faster build on two cores, somewhat slower
# executions), without debug info (symbol names still make backtraces readable; rebuild
# without PHOENIX_FUZZ_RUSTFLAGS to get line numbers when reproducing a crash).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ "${PHOENIX_SKIP_FUZZ:-}" == "1" ]]; then
    echo "PHOENIX_SKIP_FUZZ=1: skipping the fuzz smoke run"
    exit 0
fi

runs="${PHOENIX_FUZZ_RUNS:-50000}"
max_time="${PHOENIX_FUZZ_MAX_TIME:-900}"
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="${PHOENIX_FUZZ_RUSTFLAGS:--Cdebuginfo=0}"
# The same build options for `build` and `run`, or `run` rebuilds everything.
build_options=(--sanitizer none --codegen-units 16)

started=$SECONDS

# fuzz/ is its own workspace, so `cargo fmt --all` at the root does not see it.
cargo fmt --manifest-path fuzz/Cargo.toml -- --check

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked
fi
echo "$(cargo fuzz --version), $(rustc --version)"

echo "building every fuzz target (fuzz/target)"
build_started=$SECONDS
(cd fuzz && cargo fuzz build "${build_options[@]}")
build_seconds=$((SECONDS - build_started))
echo "built in $build_seconds s"

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t listed < <(cd fuzz && cargo fuzz list)
    # The slow stateful targets first, so that the fast ones fill the other core meanwhile.
    targets=()
    for target in "${listed[@]}"; do
        if [[ $target == stateful_* ]]; then targets+=("$target"); fi
    done
    for target in "${listed[@]}"; do
        if [[ $target != stateful_* ]]; then targets+=("$target"); fi
    done
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Run one target; writes "<target> <executions> <milliseconds>" to $work/<target>.result.
run_target() {
    local target="$1" corpus="$work/$1" log="$work/$1.log"
    mkdir -p "$corpus"
    if [[ -d "fuzz/corpus/$target" ]]; then
        cp -r "fuzz/corpus/$target/." "$corpus/"
    fi
    local target_started
    target_started=$(date +%s%N)
    if ! (cd fuzz && cargo fuzz run "${build_options[@]}" "$target" "$corpus" -- \
        -runs="$runs" -max_total_time="$max_time" -print_final_stats=1) >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz target $target FAILED (input saved under fuzz/artifacts/$target/)" >&2
        return 1
    fi
    local executed
    executed=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    echo "$target ${executed:-0} $((($(date +%s%N) - target_started) / 1000000))" \
        >"$work/$target.result"
}

# Two targets at a time (one per core of the CI machine).
jobs="${PHOENIX_FUZZ_JOBS:-2}"
failed=0
running=0
for target in "${targets[@]}"; do
    run_target "$target" &
    running=$((running + 1))
    if [[ $running -ge $jobs ]]; then
        wait -n || failed=1
        running=$((running - 1))
    fi
done
while [[ $running -gt 0 ]]; do
    wait -n || failed=1
    running=$((running - 1))
done
if [[ $failed -ne 0 ]]; then
    echo "fuzz smoke run FAILED" >&2
    exit 1
fi

printf '\n%-28s %12s %9s %10s\n' target executions seconds exec/s
total_runs=0
short=()
for target in "${targets[@]}"; do
    read -r name executed ms <"$work/$target.result"
    total_runs=$((total_runs + executed))
    if [[ $executed -lt $runs ]]; then short+=("$name ($executed)"); fi
    printf '%-28s %12s %7d.%01d %10s\n' "$name" "$executed" $((ms / 1000)) $((ms % 1000 / 100)) \
        "$((executed * 1000 / (ms > 0 ? ms : 1)))"
done
echo
if [[ ${#short[@]} -gt 0 ]]; then
    echo "fuzz smoke run FAILED: stopped by the ${max_time} s cap before $runs executions: ${short[*]}" >&2
    exit 1
fi
echo "fuzz smoke run: ${#targets[@]} targets, $total_runs executions, no crash, $((SECONDS - started)) s in all (build $build_seconds s)"
