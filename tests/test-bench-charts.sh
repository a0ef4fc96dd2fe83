#!/bin/sh
# test-bench-charts: bench/charts draws every chart from the committed benchmark JSON
# (bench/out/*.json) into a scratch directory, each a real picture (a PNG of a sensible
# size with more than a few colours, not a blank page); docs/benchmarks.md shows each
# chart and only pictures that exist, its links resolve, the README shows the headline
# chart, and the committed charts are in docs/pictures/. Bad input (unreadable JSON, no
# results) fails with a message naming the problem.
# ctest: timeout=180 labels=docs
#
# Run by ctest through build/run-test (see tests/shell-lib).

. "${TETHER_SOURCE_DIR:?run this through ctest (TETHER_SOURCE_DIR is not set)}/tests/shell-lib"
python=/usr/bin/python3
charts="bench-latency.png bench-throughput.png bench-spawn.png bench-bandwidth.png"
charts="$charts bench-connect.png"
page=$source/docs/benchmarks.md

if ! $python -c 'import matplotlib' > "$out/import.log" 2>&1; then
    fail "matplotlib is not installed: install python3-matplotlib (build-aux/install-deps test)"
    show "$out/import.log"
    finish test-bench-charts
fi

mkdir -p "$out/charts"
if $python "$source/bench/charts" --to "$out/charts" "$source/bench/out" \
    > "$out/charts.log" 2>&1; then
    ok "bench/charts draws from bench/out/*.json"
else
    fail "bench/charts failed on the committed JSON"
    show "$out/charts.log"
fi

# Each PNG: its size in pixels, its number of distinct colours, and the share of pixels
# that are not background; a chart is at least 800 x 300, with 20 colours and 3% ink.
for png in $charts; do
    file=$out/charts/$png
    if [ ! -s "$file" ]; then
        fail "$png was not written"
        continue
    fi
    if $python - "$file" > "$out/$png.check" 2>&1 << 'EOF'
import sys
import matplotlib.image
img = matplotlib.image.imread(sys.argv[1])
h, w = img.shape[:2]
rgb = (img[:, :, :3] * 255).astype(int)
packed = rgb[:, :, 0] * 65536 + rgb[:, :, 1] * 256 + rgb[:, :, 2]
colours = len(set(packed.ravel().tolist()))
ink = float((packed != packed[0, 0]).mean())
print(f"{w} x {h} pixels, {colours} colours, {ink:.1%} ink")
sys.exit(0 if w >= 800 and h >= 300 and colours >= 20 and ink >= 0.03 else 1)
EOF
    then
        ok "$png: $(cat "$out/$png.check")"
    else
        fail "$png is not a real chart: $(cat "$out/$png.check")"
    fi
    if [ -s "$source/docs/pictures/$png" ]; then
        ok "docs/pictures/$png is committed"
    else
        fail "docs/pictures/$png is missing: run make bench-charts BENCH_OUT=bench/out"
    fi
    if grep -q "(pictures/$png)" "$page"; then
        ok "docs/benchmarks.md shows $png"
    else
        fail "docs/benchmarks.md does not show pictures/$png"
    fi
done
extra=
for file in "$out/charts"/*; do
    case " $charts " in
    *" $(basename "$file") "*) ;;
    *) extra="$extra $(basename "$file")" ;;
    esac
done
if [ -z "$extra" ]; then
    ok "bench/charts writes only the charts this test knows"
else
    fail "bench/charts wrote charts this test does not check:$extra"
fi

# tests/bench-charts/python.json: a quick run of bench/python-bench (raw, pipe, rpyc,
# pyro4, tether) that measured echoes of several payload sizes, which the bandwidth chart
# draws as lines; the charts without their JSON are left out, and said so.
mkdir -p "$out/sweep"
if $python "$source/bench/charts" --to "$out/sweep" "$source/tests/bench-charts" \
    > "$out/sweep.log" 2>&1 &&
    grep -q 'bench-spawn.png: left out, no usable spawn.json' "$out/sweep.log"; then
    ok "bench/charts draws the charts of a python.json alone, and names those left out"
else
    fail "bench/charts on tests/bench-charts/"
    show "$out/sweep.log"
fi
if [ -s "$out/sweep/bench-bandwidth.png" ] && [ ! -e "$out/sweep/bench-spawn.png" ] &&
    $python - "$out/sweep/bench-bandwidth.png" > "$out/sweep.check" 2>&1 << 'EOF'
import sys
import matplotlib.image
img = matplotlib.image.imread(sys.argv[1])
rgb = (img[:, :, :3] * 255).astype(int)
packed = rgb[:, :, 0] * 65536 + rgb[:, :, 1] * 256 + rgb[:, :, 2]
print(f"{img.shape[1]} x {img.shape[0]} pixels, {len(set(packed.ravel().tolist()))} colours")
sys.exit(0 if img.shape[1] >= 800 and (packed != packed[0, 0]).mean() >= 0.03 else 1)
EOF
then
    ok "bandwidth by payload size: $(cat "$out/sweep.check")"
else
    fail "the bandwidth chart of tests/bench-charts/python.json: $(cat "$out/sweep.check")"
fi

# Every picture docs/benchmarks.md and the README show exists.
missing=
for ref in $(grep -o '](pictures/[^)]*)' "$page" | sed 's/^](//; s/)$//'); do
    [ -f "$source/docs/$ref" ] || missing="$missing docs/$ref"
done
for ref in $(grep -o -e '](docs/pictures/[^)]*)' -e 'src="docs/pictures/[^"]*"' \
    "$source/README.md" | sed 's/^](//; s/)$//; s/^src="//; s/"$//'); do
    [ -f "$source/$ref" ] || missing="$missing $ref"
done
if [ -z "$missing" ]; then
    ok "every picture of docs/benchmarks.md and README.md exists"
else
    fail "pictures shown but missing:$missing"
fi
if $python -c 'import sys; sys.path.insert(0, sys.argv[1]); from doc_pages import broken_links
broken = broken_links(sys.argv[2]); print(" ".join(broken)); sys.exit(1 if broken else 0)' \
    "$source/python/tests" "$page" > "$out/links.log" 2>&1; then
    ok "the links of docs/benchmarks.md resolve"
else
    fail "docs/benchmarks.md has broken links: $(cat "$out/links.log")"
fi
if grep -q '(docs/pictures/bench-latency.png)' "$source/README.md" &&
    grep -q '(docs/benchmarks.md)' "$source/README.md"; then
    ok "README.md shows the headline chart and links docs/benchmarks.md"
else
    fail "README.md does not show docs/pictures/bench-latency.png or link docs/benchmarks.md"
fi

# Bad input: an unreadable file is named, and no results at all is an error.
mkdir -p "$out/bad" "$out/empty"
echo '{"summary": ' > "$out/bad/core.json"
cp "$source/bench/out/host.json" "$out/bad/host.json"
if $python "$source/bench/charts" --to "$out/bad" "$out/bad" > "$out/bad.log" 2>&1; then
    fail "bench/charts succeeded on a truncated core.json"
elif grep -q 'core.json: cannot read it' "$out/bad.log" && [ -s "$out/bad/bench-connect.png" ]; then
    ok "a truncated core.json is named, and the charts of the other files are still drawn"
else
    fail "a truncated core.json: no clear message, or the connect chart was not drawn"
    show "$out/bad.log"
fi
if $python "$source/bench/charts" "$out/empty" > "$out/empty.log" 2>&1; then
    fail "bench/charts succeeded on a directory without results"
elif grep -q 'holds no benchmark results' "$out/empty.log"; then
    ok "a directory without results is an error that says so"
else
    fail "a directory without results: no clear message"
    show "$out/empty.log"
fi

finish test-bench-charts
