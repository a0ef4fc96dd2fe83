#!/bin/sh
# test-header-threads: every public declaration of include/tether.h says which thread may
# call it (build-aux/check-header), and the check catches one that does not.
# ctest: timeout=30 labels=header
#
# Run by ctest through build/run-test (see tests/shell-lib).

. "${TETHER_SOURCE_DIR:?run this through ctest (TETHER_SOURCE_DIR is not set)}/tests/shell-lib"
check=$source/build-aux/check-header

/usr/bin/python3 "$check" "$source/include/tether.h" > "$out/header" 2>&1
expect_status "check-header on include/tether.h" $? "$out/header"

cat > "$out/scratch.h" <<'H'
/* Documented. Thread: any. */
TETHER_EXPORT int tether_documented(void);

/* Says nothing about threads. */
TETHER_EXPORT int tether_silent(int a,
                                int b);
H
/usr/bin/python3 "$check" "$out/scratch.h" > "$out/scratch" 2>&1
if [ $? -eq 1 ] && grep -q 'tether_silent says no' "$out/scratch" &&
    ! grep -q 'tether_documented says no' "$out/scratch"; then
    ok "a declaration without a Thread: line is caught"
else
    fail "check-header missed a declaration without a Thread: line"
    show "$out/scratch"
fi

finish test-header-threads
