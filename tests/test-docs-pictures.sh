#!/bin/sh
# test-docs-pictures: the pictures of docs/ are kept true. Every docs/pictures/*.dot
# renders with graphviz and has its PNG committed beside it, docs/architecture.md shows
# each of them, and the layer picture names every .c file of src/ (so a file added
# or moved without redrawing the picture fails here).
# ctest: timeout=60 labels=docs
#
# Run by ctest through build/run-test (see tests/shell-lib).

. "${TETHER_SOURCE_DIR:?run this through ctest (TETHER_SOURCE_DIR is not set)}/tests/shell-lib"
pictures=$source/docs/pictures

for src in "$pictures"/*.dot; do
    name=$(basename "$src" .dot)
    if dot -Tpng "$src" -o "$out/$name.png" > "$out/$name.log" 2>&1 && [ -s "$out/$name.png" ]; then
        ok "$name.dot renders"
    else
        fail "$name.dot does not render"
        show "$out/$name.log"
    fi
    if [ -s "$pictures/$name.png" ]; then
        ok "$name.png is committed"
    else
        fail "docs/pictures/$name.png is missing: run make pictures"
    fi
    if grep -q "(pictures/$name.png)" "$source/docs/architecture.md"; then
        ok "docs/architecture.md shows $name.png"
    else
        fail "docs/architecture.md does not show pictures/$name.png"
    fi
done

missing=
for file in $(cd "$source/src" && find . -name '*.c' | sed 's|^\./||' | sort); do
    if ! grep -q "$(basename "$file")" "$pictures/layers.dot"; then
        missing="$missing $file"
    fi
done
if [ -z "$missing" ]; then
    ok "layers.dot names every .c file of src/"
else
    fail "layers.dot does not name:$missing (redraw it, then make pictures)"
fi

finish test-docs-pictures
