#!/usr/bin/env bash
# The whole test suite: unit tests and end-to-end tests, on a normal build
# and on an AddressSanitizer + UndefinedBehaviorSanitizer build, then one
# summary line ("N passed, N failed").  Installs missing Debian packages
# first (as root, or through sudo).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

scripts/deps.sh test || exit 1

py=/usr/bin/python3
results=$(mktemp -d)
status=0

build() { # dir, meson options...
    local dir=$1; shift
    [ -d "$dir" ] || meson setup "$dir" "$@" >"$results/setup-$dir.log" 2>&1 || {
        cat "$results/setup-$dir.log"; return 1; }
    ninja -C "$dir"
}

# check NAME OK: one line per static check; the summary counts it like a test.
check() {
    if [ "$2" = 0 ]; then echo "check $1: ok" >>"$results/checks"; else
        echo "check $1: FAILED" >>"$results/checks"; status=1; fi
}

echo "== format"
clang-format --dry-run --Werror src/*.c include/relabel/*.h tests/unit/*.c tests/fuzz/*.c \
    tests/fuzz/session/*.c tests/fuzz/*.h tests/fuzz/session/*.h bench/*.c deploy/container/*.c
rc=$?; [ $rc = 0 ] || echo "clang-format: sources are not formatted"
check format $rc

echo "== clang: compile (warnings are errors)"
CC=clang build build-clang; check clang-build $?

echo "== cppcheck"
cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability -I include src/
check cppcheck $?

for variant in build build-asan; do
    opts=()
    [ $variant = build-asan ] && opts=(-Db_sanitize=address,undefined -Db_lundef=false)
    echo "== $variant: compile"
    build $variant "${opts[@]}"; rc=$?; check "$variant-compile" $rc
    [ $rc = 0 ] || continue

    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    echo "== $variant: unit tests"
    meson test -C $variant --print-errorlogs || status=1
    cp $variant/meson-logs/testlog.junit.xml "$results/unit-$variant.xml" 2>/dev/null

    echo "== $variant: end-to-end tests"
    sanitized=""; [ $variant = build-asan ] && sanitized=1
    RELABEL_SANITIZED=$sanitized RELABEL_BIN="$root/$variant/relabel" $py -m pytest tests/e2e -q -p no:cacheprovider \
        --junitxml="$results/e2e-$variant.xml" || status=1
done

# Once per run, not per build: these make their own builds (an install
# into a DESTDIR, the container image) from the sources.
echo "== deploy: container image, Kubernetes manifests, systemd unit, install, man pages"
$py -m pytest tests/deploy -q -p no:cacheprovider --junitxml="$results/deploy.xml" || status=1

echo "== fuzzing (${FUZZ_SECONDS:-30}s per target)"
tests/fuzz/run.sh >"$results/fuzz.log" 2>&1
fuzz_rc=$?
grep -E '^(==|fuzz )' "$results/fuzz.log"
[ $fuzz_rc -eq 0 ] || { status=1; tail -60 "$results/fuzz.log"; }

$py - "$results" <<'PY'
import glob, sys, xml.etree.ElementTree as ET
passed = failed = skipped = 0
for f in glob.glob(sys.argv[1] + "/*.xml"):
    for tc in ET.parse(f).getroot().iter("testcase"):
        kinds = {c.tag for c in tc}
        if kinds & {"failure", "error"}:
            failed += 1
        elif "skipped" in kinds:
            skipped += 1
        else:
            passed += 1
# One result per fuzz target, from the runner's summary.
try:
    log = open(sys.argv[1] + "/fuzz.log").read().split("== fuzz summary")[-1]
    for line in log.splitlines():
        if line.startswith("fuzz "):
            if " execs," in line:
                passed += 1
            else:
                failed += 1
except OSError:
    pass
# One result per static check (format, compile, cppcheck).
try:
    for line in open(sys.argv[1] + "/checks"):
        print(line.rstrip())
        if line.rstrip().endswith(": ok"):
            passed += 1
        else:
            failed += 1
except OSError:
    pass
print(f"{passed} passed, {failed} failed, {skipped} skipped")
PY
rm -rf "$results"
exit $status
