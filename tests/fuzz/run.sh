#!/usr/bin/env bash
# tests/fuzz/run.sh - builds the libFuzzer targets (if the build directory is
# missing) and runs every fuzz_* executable found in it for a bounded time.
#
#   tests/fuzz/run.sh                       # CI: 30 s per target
#   FUZZ_SECONDS=600 tests/fuzz/run.sh      # a longer run by hand
#   FUZZ_SECONDS=3600 FUZZ_TARGETS="smtp_data config" tests/fuzz/run.sh
#
# Environment:
#   FUZZ_SECONDS   seconds per target (default 30)
#   FUZZ_BUILD     build directory (default build-fuzz), set up with
#                  CC=clang -Dfuzz=true -Db_sanitize=address,undefined
#                  -Db_lundef=false when it does not exist
#   FUZZ_TARGETS   names to run (without "fuzz_"); default: all found
#   FUZZ_OUT       where crash files and logs go (default $FUZZ_BUILD/fuzz-out)
#   FUZZ_KEEP_CORPUS=1  keep the grown corpora (printed at the end)
#
# Each target first replays its seed corpus once (-runs=0), so a crashing
# seed fails fast, then fuzzes a temporary copy of the corpus (the
# repository is never modified) with tests/fuzz/smtp.dict.  One line per
# target: "fuzz TARGET: N execs, cov C, ft F, corpus K".  The exit status
# is non-zero if any target crashed, leaked, timed out or failed to start;
# the crash file's path is printed (reproduce with: BUILD/.../fuzz_TARGET
# CRASH_FILE, see tests/fuzz/README.md).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
root=$(pwd)

seconds=${FUZZ_SECONDS:-30}
build=${FUZZ_BUILD:-build-fuzz}
out=${FUZZ_OUT:-$build/fuzz-out}
dict=$root/tests/fuzz/smtp.dict

if [ ! -f "$build/build.ninja" ]; then
    echo "== setting up $build"
    CC=clang meson setup "$build" -Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false ||
        exit 1
fi
ninja -C "$build" || exit 1

# Largest input per target: long enough for a few commands, replies or a
# whole small config, short enough to keep executions fast.
max_len_of() {
    case $1 in
    config) echo 8192 ;;
    smtp_cmd | smtp_reply | smtp_data) echo 4096 ;;
    smtp_ehlo) echo 2048 ;;
    http) echo 8192 ;; # twice the endpoint's head cap: the cap is hit too
    session) echo 8192 ;;
    *) echo 4096 ;;
    esac
}

# Seeds: tests/fuzz/corpus/NAME, or a corpus directory next to the target's
# sources (tests/fuzz/NAME/corpus), or none.
seeds_of() {
    local d
    for d in "tests/fuzz/corpus/$1" "tests/fuzz/$1/corpus"; do
        [ -d "$d" ] && { echo "$root/$d"; return; }
    done
}

mapfile -t exes < <(find "$build" -type f -name 'fuzz_*' -perm -u+x ! -path '*.p/*' | sort)
if [ ${#exes[@]} -eq 0 ]; then
    echo "no fuzz_* executables in $build (configured with -Dfuzz=true?)"
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/relabel-fuzz.XXXXXX")
[ "${FUZZ_KEEP_CORPUS:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
status=0
summary=()

for exe in "${exes[@]}"; do
    name=$(basename "$exe")
    name=${name#fuzz_}
    if [ -n "${FUZZ_TARGETS:-}" ] && [[ " $FUZZ_TARGETS " != *" $name "* ]]; then
        continue
    fi
    corpus=$work/corpus-$name
    mkdir -p "$corpus" "$out/$name"
    seeds=$(seeds_of "$name")
    [ -n "$seeds" ] && cp -R "$seeds"/. "$corpus"/
    log=$out/$name.log
    opts=(-max_len="$(max_len_of "$name")" -dict="$dict" -artifact_prefix="$out/$name/"
        -timeout=25 -rss_limit_mb=2560 -print_final_stats=1)

    echo "== fuzz_$name: seed replay"
    if ! "$exe" "${opts[@]}" -runs=0 "$corpus" >"$log.replay" 2>&1; then
        tail -n 40 "$log.replay"
        echo "fuzz $name: CRASH while replaying the seed corpus"
        grep -h 'Test unit written to' "$log.replay" | sed 's/^/  /'
        summary+=("fuzz $name: seed corpus crashed (log $log.replay)")
        status=1
        continue
    fi

    echo "== fuzz_$name: ${seconds}s"
    "$exe" "${opts[@]}" -max_total_time="$seconds" "$corpus" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -n 1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
    line="fuzz $name: ${execs:-?} execs, cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}"
    if [ $rc -ne 0 ]; then
        tail -n 60 "$log"
        crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        line="$line: FAILED (exit $rc)${crash:+, crash file $crash}; log $log"
        status=1
    fi
    echo "$line"
    summary+=("$line")
done

echo "== fuzz summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
[ "${FUZZ_KEEP_CORPUS:-0}" = 1 ] && echo "grown corpora kept in $work"
exit $status
