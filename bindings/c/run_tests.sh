#!/usr/bin/env bash
# Builds the C examples against include/autodir.h and libautodir.so, runs them on the tiny model folder,
# runs a happy path and error paths under valgrind, and checks that the library's runtime dependencies are
# what the header documents. Prints "c-tests: N passed, M failed" last; exits non-zero on any failure.
#
#   bash bindings/c/run_tests.sh [LIB_DIR]
#
# LIB_DIR (or $AUTODIR_LIB_DIR) holds libautodir.so; default: the first of .build/debug, .build/release.
# $AUTODIR_TEST_MODEL: the model folder (default Tests/EngineTests/Fixtures/pipeline/tiny-model).
# $AUTODIR_TEST_IMAGE: the input PNG (default Tests/EngineTests/Fixtures/pipeline/sample.png).
# $AUTODIR_SKIP_VALGRIND=1 skips the valgrind runs (they are skipped with a note when valgrind is missing).
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

lib_dir=${1:-${AUTODIR_LIB_DIR:-}}
if [ -z "$lib_dir" ]; then
    for d in .build/debug .build/release; do
        if [ -f "$d/libautodir.so" ]; then lib_dir=$d; break; fi
    done
fi
if [ -z "$lib_dir" ] || [ ! -f "$lib_dir/libautodir.so" ]; then
    echo "run_tests.sh: libautodir.so not found (build it with 'swift build', or pass its folder)" >&2
    echo "c-tests: 0 passed, 1 failed"
    exit 1
fi
lib_dir=$(cd "$lib_dir" && pwd)
model=${AUTODIR_TEST_MODEL:-Tests/EngineTests/Fixtures/pipeline/tiny-model}
image=${AUTODIR_TEST_IMAGE:-Tests/EngineTests/Fixtures/pipeline/sample.png}
work=$(mktemp -d "${TMPDIR:-/tmp}/autodir-c-tests.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "c-tests: library $lib_dir/libautodir.so, model $model, image $image"

passed=0; failed=0
pass() { passed=$((passed + 1)); echo "PASS $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1"; }
# run NAME COMMAND...: the command must exit 0.
run() {
    local name=$1; shift
    if "$@" >"$work/$name.log" 2>&1; then pass "$name"; else fail "$name (exit $?)"; sed 's/^/    /' "$work/$name.log" | tail -30; fi
}
# run_fails NAME WANT COMMAND...: the command must exit with status WANT (an expected, reported failure).
run_fails() {
    local name=$1 want=$2; shift 2
    "$@" >"$work/$name.log" 2>&1
    local rc=$?
    if [ "$rc" -eq "$want" ]; then pass "$name"; else fail "$name (exit $rc, want $want)"; sed 's/^/    /' "$work/$name.log" | tail -30; fi
}

# 1. Compile every example with warnings as errors.
cflags=(-std=c11 -Wall -Wextra -Werror -Iinclude)
ldflags=(-L"$lib_dir" -lautodir -Wl,-rpath,"$lib_dir" -lpthread -lm)
for prog in version detect restore concurrent errors; do
    if cc "${cflags[@]}" "bindings/c/$prog.c" "${ldflags[@]}" -o "$work/$prog" 2>"$work/cc-$prog.log"; then
        pass "compile $prog.c"
    else
        fail "compile $prog.c"; sed 's/^/    /' "$work/cc-$prog.log"
    fi
done
# The header on its own, as C++ too (extern "C", no C-only constructs).
if ! command -v c++ >/dev/null 2>&1; then
    echo "SKIP autodir.h compiles as C++ (no c++ compiler)"
elif echo '#include "autodir.h"' | c++ -x c++ -Wall -Werror -Iinclude -fsyntax-only - 2>"$work/cxx.log"; then
    pass "autodir.h compiles as C++"
else
    fail "autodir.h compiles as C++"; sed 's/^/    /' "$work/cxx.log"
fi

# 2. The examples on the tiny model.
mkdir -p "$work/scratch"
run version "$work/version"
run detect "$work/detect" "$model" "$image"
run restore "$work/restore" "$model" "$image" "$work/out.png" --steps 2 --max-passes 2 --seed 7
if [ -s "$work/out.png" ] && head -c 8 "$work/out.png" | od -An -tx1 | grep -q "89 50 4e 47"; then
    pass "restore wrote a PNG"
else
    fail "restore wrote a PNG"
fi
run restore-prompt "$work/restore" "$model" "$image" "$work/out-prompt.png" --steps 2 --prompt "A photo needs noise artifact reduction" --color-fix
run concurrent "$work/concurrent" "$model" "$image" 2
run concurrent-1-thread "$work/concurrent" "$model" "$image" 2 1
run errors "$work/errors" "$model" "$image" "$work/scratch"
run_fails "detect on a corrupt PNG fails cleanly" 1 "$work/detect" "$model" "$work/scratch/truncated.png"
run_fails "restore with a missing model folder fails cleanly" 1 "$work/restore" /nonexistent/model "$image" "$work/x.png"

# 3. Valgrind: a happy path and error paths, no invalid access, no definite or possible leaks.
#    bindings/c/valgrind.supp lists the one-time allocations of the Swift runtime and libdispatch that
#    valgrind cannot see freed (why: see the file).
if [ "${AUTODIR_SKIP_VALGRIND:-0}" = 1 ]; then
    echo "SKIP valgrind (AUTODIR_SKIP_VALGRIND=1)"
elif ! command -v valgrind >/dev/null 2>&1; then
    echo "SKIP valgrind (not installed: apt-get install valgrind)"
else
    # Valgrind 3.19 (Debian 12) cannot read the DWARF that the Swift toolchain emits and gives up, so it
    # runs on a copy of the library without debug sections (found first through LD_LIBRARY_PATH).
    mkdir -p "$work/valgrind-lib"
    cp "$lib_dir/libautodir.so" "$work/valgrind-lib/"
    strip --strip-debug "$work/valgrind-lib/libautodir.so"
    vg=(env LD_LIBRARY_PATH="$work/valgrind-lib" valgrind --quiet --error-exitcode=99 --leak-check=full
        --errors-for-leak-kinds=definite,possible --show-leak-kinds=definite,possible
        --suppressions=bindings/c/valgrind.supp --num-callers=30)
    # Exit 99 means valgrind found an error; the program's own status otherwise.
    run_fails "valgrind: restore (happy path)" 0 "${vg[@]}" "$work/restore" "$model" "$image" "$work/vg.png" --steps 1 --max-passes 1
    run_fails "valgrind: detect on a corrupt PNG (error path)" 1 "${vg[@]}" "$work/detect" "$model" "$work/scratch/truncated.png"
    run_fails "valgrind: missing model folder (error path)" 1 "${vg[@]}" "$work/detect" /nonexistent/model "$image"
    run_fails "valgrind: every bad-argument path (errors.c)" 0 "${vg[@]}" "$work/errors" "$model" "$image" "$work/scratch"
fi

# 4. Runtime dependencies: what the library needs besides libc, and whether it runs without the toolchain.
ldd "$lib_dir/libautodir.so" >"$work/ldd.log" 2>&1
if grep -q "not found" "$work/ldd.log"; then
    fail "ldd libautodir.so: every dependency resolves"; sed 's/^/    /' "$work/ldd.log"
else
    pass "ldd libautodir.so: every dependency resolves"
fi
swift_deps=$(grep -oE 'lib(swift|Foundation|_Foundation|dispatch|BlocksRuntime)[A-Za-z_]*\.so' "$work/ldd.log" | sort -u | tr '\n' ' ')
if [ -z "$swift_deps" ]; then
    # The Swift runtime is linked in statically. Copy the library alone next to an example and run it with
    # no LD_LIBRARY_PATH; where a private mount namespace is allowed (root), the toolchain folder is
    # also hidden behind an empty directory, as on a machine without Swift.
    mkdir -p "$work/standalone" "$work/empty"
    cp "$lib_dir/libautodir.so" "$work/standalone/"
    cc "${cflags[@]}" bindings/c/detect.c -L"$work/standalone" -lautodir -Wl,-rpath,"$work/standalone" -lm \
        -o "$work/standalone/detect" 2>"$work/cc-standalone.log"
    toolchain=$(command -v swift >/dev/null 2>&1 && dirname "$(dirname "$(readlink -f "$(command -v swift)")")")
    standalone=(env -u LD_LIBRARY_PATH "$work/standalone/detect" "$model" "$image")
    how="no LD_LIBRARY_PATH"
    if [ -n "$toolchain" ] && [ -d "$toolchain/lib/swift" ] && unshare -m true 2>/dev/null; then
        standalone=(unshare -m sh -c 'mount --bind "$1" "$2" && shift 2 && exec "$@"' sh "$work/empty" "$toolchain" "${standalone[@]}")
        how="$toolchain hidden"
    fi
    if "${standalone[@]}" >"$work/standalone.log" 2>&1 &&
       ! env -u LD_LIBRARY_PATH ldd "$work/standalone/detect" | grep -qE '/swift|not found'; then
        pass "libautodir.so runs without the Swift toolchain ($how; static Swift runtime)"
    else
        fail "libautodir.so runs without the Swift toolchain ($how)"; sed 's/^/    /' "$work/standalone.log"
    fi
else
    echo "NOTE libautodir.so uses the Swift runtime from the toolchain: $swift_deps"
fi

echo "c-tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
