#!/usr/bin/env bash
# Build the libFuzzer targets with clang and run each for FUZZ_SECONDS (default 60): CI mode,
# on a throw-away copy of the seeds in fuzz/corpus/<target>.
#
# scripts/fuzz.sh --long [TARGET...]: hours-long runs (FUZZ_SECONDS default 3600 per target)
# that keep what they find: the corpus lives in fuzz/corpus/<target> (merged and minimized at the
# end, so it grows only by inputs with new coverage), crashes in fuzz/artifacts/<target>/.
# FUZZ_JOBS (default 1) runs that many fuzzing processes per target. See docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
long=0
if [ "${1:-}" = "--long" ]; then
  long=1
  shift
fi
only=("$@")
scripts/install-deps.sh --with-fuzz
BUILD_DIR=${BUILD_DIR:-build-fuzz}
CC=clang CXX=clang++ cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMAILCAR_FUZZ=ON -DMAILCAR_TESTS=OFF >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
if [ $long = 1 ]; then seconds=${FUZZ_SECONDS:-3600}; else seconds=${FUZZ_SECONDS:-60}; fi
status=0
results=$(mktemp -d)
# One CI-mode run: its verdict goes to $results/<name>.ok or .failed (printed at the end, in
# order, since the runs overlap).
fuzz_one() {
  local target=$1 name=$2 seeds=$3
  shift 3
  local work
  work=$(mktemp -d)
  [ -d "$seeds" ] && cp -r "$seeds"/. "$work"/ 2>/dev/null || true
  echo "== fuzz_$name for ${seconds}s"
  if ! "$target" "$@" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
       -max_total_time="$seconds" "$work" >"$work.log" 2>&1; then
    { echo "fuzz_$name FAILED:"; tail -50 "$work.log"; } >"$results/$name.failed"
  else
    { echo "fuzz_$name:"; grep -E "stat::number_of_executed_units|Done" "$work.log" | tail -2; } \
      >"$results/$name.ok"
  fi
  rm -rf "$work" "$work.log"
}
for target in "$BUILD_DIR"/fuzz/fuzz_*; do
  [ -x "$target" ] || continue
  name=$(basename "$target"); name=${name#fuzz_}
  if [ ${#only[@]} -gt 0 ] && [[ ! " ${only[*]} " == *" $name "* ]]; then continue; fi
  seeds=fuzz/corpus/$name
  dict=()
  [ -f "fuzz/$name.dict" ] && dict=(-dict="fuzz/$name.dict")
  flags=(-timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1)
  if [ $long = 1 ]; then
    mkdir -p "$seeds" "fuzz/artifacts/$name"
    log=fuzz/artifacts/$name/last-run.log
    echo "== fuzz_$name for ${seconds}s, corpus $seeds ($(ls "$seeds" | wc -l) inputs)"
    jobs=${FUZZ_JOBS:-1}
    if ! "$target" "${dict[@]}" "${flags[@]}" -max_total_time="$seconds" \
         -artifact_prefix="fuzz/artifacts/$name/" -jobs="$jobs" -workers="$jobs" \
         "$seeds" >"$log" 2>&1; then
      echo "fuzz_$name FAILED (crash input in fuzz/artifacts/$name/):"; tail -50 "$log"; status=1
    fi
    # Keep only inputs that add coverage: the corpus stays small enough to commit.
    merged=$(mktemp -d)
    "$target" -merge=1 "${flags[@]}" "$merged" "$seeds" >>"$log" 2>&1 \
      && rm -rf "$seeds" && mv "$merged" "$seeds" || rm -rf "$merged"
    grep -hE "stat::number_of_executed_units|Done" "$log" fuzz-*.log 2>/dev/null | tail -2 || true
    rm -f fuzz-*.log
    echo "   corpus now $(ls "$seeds" | wc -l) inputs"
    continue
  fi
  # CI mode: each target for `seconds` on a throw-away copy of its seeds, FUZZ_PARALLEL
  # (default: the number of cores) targets at once, so the whole step takes about
  # targets x seconds / cores; each target still gets its full time.
  while [ "$(jobs -rp | wc -l)" -ge "${FUZZ_PARALLEL:-$(nproc)}" ]; do wait -n || true; done
  fuzz_one "$target" "$name" "$seeds" "${dict[@]}" &
done
wait
for result in "$results"/*.failed; do
  [ -e "$result" ] || continue
  cat "$result"; status=1
done
cat "$results"/*.ok 2>/dev/null || true
rm -rf "$results"
exit $status
