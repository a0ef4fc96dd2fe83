#!/bin/sh
# test-layers: no file of the core uses a higher layer (build-aux/check-layers, over the
# includes of src/ and the symbols of the library's object files), and the check itself
# catches an upward include and an upward call.
# ctest: timeout=60 labels=shell
#
# Run by ctest through build/run-test (see tests/shell-lib).

. "${TETHER_SOURCE_DIR:?run this through ctest (TETHER_SOURCE_DIR is not set)}/tests/shell-lib"
check=$source/build-aux/check-layers

# --- the tree as it is --------------------------------------------------------------------

/usr/bin/python3 "$check" --source-dir "$source" --build-dir "$build" > "$out/tree" 2>&1
expect_status "check-layers on the tree" $? "$out/tree"

# --- a scratch tree with one upward edge of each kind must fail ---------------------------

scratch=$out/scratch
mkdir -p "$scratch/src/codec" "$scratch/src/rpc" "$scratch/obj/CMakeFiles/tether_obj.dir/src/codec" \
    "$scratch/obj/CMakeFiles/tether_obj.dir/src/rpc"
cat > "$scratch/src/rpc/above.c" <<'C'
int tether__above(void);
int tether__above(void) { return 1; }
C
cat > "$scratch/src/codec/below.c" <<'C'
int tether__above(void);
int tether__below(void);
int tether__below(void) { return tether__above(); }
C
objs=$scratch/obj/CMakeFiles/tether_obj.dir/src
cc -c -o "$objs/rpc/above.c.o" "$scratch/src/rpc/above.c" &&
    cc -c -o "$objs/codec/below.c.o" "$scratch/src/codec/below.c" || fail "compiling the scratch tree"
/usr/bin/python3 "$check" --source-dir "$scratch" --build-dir "$scratch/obj" > "$out/call" 2>&1
if [ $? -eq 1 ] && grep -q 'codec/below.c calls tether__above of src/rpc/above.c' "$out/call"; then
    ok "an upward call is caught"
else
    fail "an upward call went unnoticed"
    show "$out/call"
fi

printf '#include "rpc/above.h"\n' > "$scratch/src/codec/upward-include.h"
TETHER_BUILD_DIR= /usr/bin/python3 "$check" --source-dir "$scratch" > "$out/include" 2>&1
if [ $? -eq 1 ] && grep -q 'codec includes rpc, a higher layer' "$out/include"; then
    ok "an upward include is caught"
else
    fail "an upward include went unnoticed"
    show "$out/include"
fi

finish test-layers
