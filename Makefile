# tether: the user's entry point. CMake + Ninja do the building; this file only names
# the usual tasks. Every task first installs the Debian packages it needs that are
# missing (build-aux/install-deps; set TETHER_SKIP_DEPS=1 to skip that step).
#
#   make               configure and build in build/ (RelWithDebInfo, assertions kept)
#   make deps          install missing packages (DEPS=test by default; see install-deps)
#   make test          build, run ctest, then pytest on python/tests if it has tests, then
#                      the protocol conformance suite (make conformance: tests/conformance)
#   make test-posix    the same with the portable platform layer (TETHER_PLATFORM=posix:
#                      poll, pipes, no epoll or eventfd) in build-posix/: what a port to
#                      macOS or a BSD builds, run here on Linux
#   make bench         Release build in build-release/, run bench/run, write its tables and
#                      charts to build-release/bench-out/ (BENCH_OUT=bench/out refreshes the
#                      committed tables, and their charts in docs/pictures/)
#   make bench-charts  draw the charts again from the JSON in $(BENCH_OUT) (bench/charts)
#   make bench-check   instructions per call of the hot paths (valgrind's callgrind) against
#                      bench/out/instructions.json: fails when one grew by over 10% (CI runs
#                      it; bench/instructions --update writes new reference counts)
#   make hardening     bench/hardening: clients admitted under a soft fd limit of 1024, then
#                      HARDENING_SECONDS of mutated frames against tether-demo while a good
#                      client calls; figures to $(BENCH_OUT) (hardening.md, .json)
#   make demo          build, then run the demo host with an example client until Ctrl-C
#                      (tools/demo.py $(ARGS); ARGS=--once: a bounded check, exit 0 if ok)
#   make asan          ASan+UBSan build in build-asan/ and its ctest
#   make tsan          TSan build in build-tsan/ and its ctest
#   make fuzz          libFuzzer build in build-fuzz/, each target for FUZZ_SECONDS
#   make install       install into PREFIX (/usr/local), DESTDIR honoured
#   make wheel         build/wheel/tether-VERSION-cp310-abi3-linux_x86_64.whl: the Python
#                      package with libtether and libuv linked in, for `pip install` on a
#                      machine without libuv (build-aux/build-wheel; the first run fetches
#                      Debian's libuv source and builds it with -fPIC: build-aux/libuv-pic)
#   make pictures      render docs/pictures/*.dot to PNG beside them (graphviz)
#   make format        clang-format every C file in place; format-check only checks
#   make clean         remove the build directories

SHELL := /bin/sh
.DEFAULT_GOAL := build

CMAKE ?= cmake
CTEST ?= ctest
PYTHON ?= /usr/bin/python3
CLANG_FORMAT ?= clang-format
PREFIX ?= /usr/local
WERROR ?= OFF
CTEST_JOBS ?= 2
FUZZ_SECONDS ?= 60
DEPS ?= test
ARGS ?=
HARDENING_SECONDS ?= 60
# Extra arguments for every cmake configure step, e.g. CMAKE_ARGS=-DTETHER_BENCH=OFF.
CMAKE_ARGS ?=

BUILD := build
BUILD_POSIX := build-posix
BUILD_RELEASE := build-release
# Where make bench writes its tables: the build tree, so that a run leaves the committed
# tables of bench/out/ alone unless asked (make bench BENCH_OUT=bench/out).
BENCH_OUT ?= $(BUILD_RELEASE)/bench-out
BUILD_ASAN := build-asan
BUILD_TSAN := build-tsan
BUILD_FUZZ := build-fuzz

INSTALL_DEPS := build-aux/install-deps
FORMAT_DIRS := include src tests tools examples bench fuzz python

# Configure a build directory: $(call configure,DIR,BUILD_TYPE,EXTRA CMAKE ARGS).
# RelWithDebInfo is given "-O2 -g" without -DNDEBUG so assertions stay in.
configure = $(CMAKE) -S . -B $(1) -G Ninja -DCMAKE_BUILD_TYPE=$(2) \
	-DCMAKE_C_FLAGS_RELWITHDEBINFO="-O2 -g" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g" \
	-DCMAKE_INSTALL_PREFIX="$(PREFIX)" -DTETHER_WERROR=$(WERROR) $(3) $(CMAKE_ARGS)

deps = @if [ -z "$(TETHER_SKIP_DEPS)" ]; then $(INSTALL_DEPS) $(1); fi

.PHONY: build all deps test test-posix pytest conformance bench bench-charts bench-check hardening \
	demo asan tsan \
	fuzz install wheel format format-check pictures clean

all: build

build:
	$(call deps,build)
	$(call configure,$(BUILD),RelWithDebInfo)
	$(CMAKE) --build $(BUILD)

deps:
	$(INSTALL_DEPS) $(DEPS)

test:
	$(call deps,test)
	$(call configure,$(BUILD),RelWithDebInfo)
	$(CMAKE) --build $(BUILD)
	$(CTEST) --test-dir $(BUILD) --output-on-failure -j$(CTEST_JOBS)
	@$(MAKE) --no-print-directory pytest
	@$(MAKE) --no-print-directory conformance

test-posix:
	$(call deps,test)
	$(call configure,$(BUILD_POSIX),RelWithDebInfo,-DTETHER_PLATFORM=posix -DTETHER_BENCH=OFF)
	$(CMAKE) --build $(BUILD_POSIX)
	$(CTEST) --test-dir $(BUILD_POSIX) --output-on-failure -j$(CTEST_JOBS)
	@$(MAKE) --no-print-directory pytest BUILD=$(BUILD_POSIX)
	@$(MAKE) --no-print-directory conformance BUILD=$(BUILD_POSIX)

# pytest exits 5 when it collects no test: that is not a failure while python/ is empty.
# The package is imported from $(BUILD)/python (the extension built by CMake beside links
# to python/tether/*.py).
pytest:
	@if [ -d python/tests ] && find python/tests -name 'test_*.py' -o -name '*_test.py' \
			| grep -q .; then \
		rm -rf $(BUILD)/rt/pytest; mkdir -p $(BUILD)/rt/pytest && chmod 700 $(BUILD)/rt/pytest; \
		echo "pytest python/tests"; \
		TETHER_BUILD_DIR="$(abspath $(BUILD))" TETHER_SOURCE_DIR="$(CURDIR)" \
		TETHER_RUNTIME_DIR="$(abspath $(BUILD))/rt/pytest" \
		PYTHONPATH="$(abspath $(BUILD))/python$${PYTHONPATH:+:$$PYTHONPATH}" \
		$(PYTHON) -m pytest -q python/tests; rc=$$?; \
		if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; \
		exit $$rc; \
	else \
		echo "pytest: no Python tests in python/tests yet"; \
	fi

# The protocol conformance suite (docs/protocol.md, "Conformance"): a peer of its own
# (python3-msgpack, not the tether package) against the C host and the C client.
conformance:
	@rm -rf $(BUILD)/rt/conformance; mkdir -p $(BUILD)/rt/conformance && \
		chmod 700 $(BUILD)/rt/conformance
	@echo "pytest tests/conformance"
	@TETHER_BUILD_DIR="$(abspath $(BUILD))" TETHER_SOURCE_DIR="$(CURDIR)" \
		TETHER_RUNTIME_DIR="$(abspath $(BUILD))/rt/conformance" \
		$(PYTHON) -m pytest -q -p no:cacheprovider tests/conformance

bench:
	@echo "make bench: a Release build in $(BUILD_RELEASE)/ first; then bench/run lists its runs" \
		"and how long they will take"
	$(call deps,bench)
	$(call configure,$(BUILD_RELEASE),Release,-DTETHER_BUILD_TESTS=OFF -DTETHER_BENCH=ON)
	$(CMAKE) --build $(BUILD_RELEASE)
	$(PYTHON) bench/run --bin-dir $(BUILD_RELEASE)/bench --out $(BENCH_OUT)
	$(PYTHON) bench/charts $(BENCH_OUT)

# The charts of bench/out/ go to docs/pictures/ (docs/benchmarks.md shows them), the
# others beside their tables; bench/charts decides from the directory.
bench-charts:
	$(call deps,docs)
	$(PYTHON) bench/charts $(BENCH_OUT)

bench-check:
	$(call deps,count)
	$(call configure,$(BUILD_RELEASE),Release,-DTETHER_BUILD_TESTS=OFF -DTETHER_BENCH=ON)
	$(CMAKE) --build $(BUILD_RELEASE)
	$(PYTHON) bench/instructions --build-dir $(BUILD_RELEASE) --check

# Figures, not a test: exits non-zero only if the host died or the good client saw errors.
hardening:
	$(call deps,demo)
	$(call configure,$(BUILD),RelWithDebInfo)
	$(CMAKE) --build $(BUILD)
	$(PYTHON) bench/hardening --build-dir $(BUILD) --seconds $(HARDENING_SECONDS) --out $(BENCH_OUT)

# tools/demo.py starts build/tether-demo and examples/demo_client.py; options it does not
# know (--tcp, --port, --quiet, --seconds) go to tether-demo.
demo:
	$(call deps,demo)
	$(call configure,$(BUILD),RelWithDebInfo)
	$(CMAKE) --build $(BUILD)
	$(PYTHON) tools/demo.py --build-dir $(BUILD) $(ARGS)

asan:
	$(call deps,test)
	$(call configure,$(BUILD_ASAN),RelWithDebInfo,-DTETHER_ASAN=ON -DTETHER_UBSAN=ON \
		-DTETHER_BENCH=OFF -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" \
		-DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g")
	$(CMAKE) --build $(BUILD_ASAN)
	$(CTEST) --test-dir $(BUILD_ASAN) --output-on-failure -j$(CTEST_JOBS)

tsan:
	$(call deps,test)
	$(call configure,$(BUILD_TSAN),RelWithDebInfo,-DTETHER_TSAN=ON -DTETHER_BENCH=OFF \
		-DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g")
	$(CMAKE) --build $(BUILD_TSAN)
	$(CTEST) --test-dir $(BUILD_TSAN) --output-on-failure -j$(CTEST_JOBS)

# Each fuzz/fuzz-NAME.c runs for FUZZ_SECONDS on a scratch copy of fuzz/corpus/NAME/
# (the repository's corpus is never modified). fuzz/NAME.dict is used when present.
# Every target runs; crashes are written to build-fuzz/artifacts/ and fail the task.
fuzz:
	$(call deps,fuzz)
	$(call configure,$(BUILD_FUZZ),RelWithDebInfo,-DCMAKE_C_COMPILER=clang -DTETHER_FUZZ=ON \
		-DTETHER_BUILD_TESTS=OFF -DTETHER_BENCH=OFF)
	$(CMAKE) --build $(BUILD_FUZZ)
	@set -e; found=; failed=; mkdir -p $(BUILD_FUZZ)/artifacts; \
	for src in fuzz/fuzz-*.c; do \
		[ -f "$$src" ] || continue; \
		found=1; \
		name=$${src#fuzz/fuzz-}; name=$${name%.c}; \
		bin=$(BUILD_FUZZ)/fuzz/fuzz-$$name; \
		work=$$(mktemp -d "$${TMPDIR:-/tmp}/tether-fuzz-$$name.XXXXXX"); \
		if [ -d fuzz/corpus/$$name ]; then cp -R fuzz/corpus/$$name/. "$$work"/; fi; \
		dict=; if [ -f fuzz/$$name.dict ]; then dict=-dict=fuzz/$$name.dict; fi; \
		echo "fuzz-$$name: $(FUZZ_SECONDS) s, corpus of $$(ls "$$work" | wc -l) inputs"; \
		rc=0; \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		ASAN_OPTIONS=detect_leaks=1 \
		"$$bin" -max_total_time=$(FUZZ_SECONDS) -timeout=30 -rss_limit_mb=2048 \
			-print_final_stats=1 $$dict \
			-artifact_prefix=$(BUILD_FUZZ)/artifacts/$$name- "$$work" \
			> $(BUILD_FUZZ)/fuzz-$$name.log 2>&1 || rc=$$?; \
		tail -n 12 $(BUILD_FUZZ)/fuzz-$$name.log; \
		rm -rf "$$work"; \
		if [ $$rc -ne 0 ]; then \
			echo "fuzz-$$name FAILED (exit $$rc): see $(BUILD_FUZZ)/fuzz-$$name.log"; \
			grep -E 'ERROR|SUMMARY|artifact' $(BUILD_FUZZ)/fuzz-$$name.log | head -n 20; \
			failed="$$failed fuzz-$$name"; \
		fi; \
	done; \
	if [ -z "$$found" ]; then echo "fuzz: no fuzz targets in fuzz/ yet"; fi; \
	if [ -n "$$failed" ]; then echo "fuzz: FAILED:$$failed"; exit 1; fi

install: build
	DESTDIR="$(DESTDIR)" $(CMAKE) --install $(BUILD)

# One abi3 wheel (CPython 3.10+); it is kept while no file it is made from changes.
wheel:
	$(call deps,wheel)
	PYTHON="$(PYTHON)" build-aux/build-wheel $(BUILD)/wheel

# The pictures of docs/ are drawn from the .dot sources beside them; commit both.
pictures:
	$(call deps,docs)
	for src in docs/pictures/*.dot; do dot -Tpng -Gdpi=110 "$$src" -o "$${src%.dot}.png" || exit 1; done

format:
	find $(FORMAT_DIRS) -name '*.[ch]' -type f 2>/dev/null | xargs -r $(CLANG_FORMAT) -i

format-check:
	find $(FORMAT_DIRS) -name '*.[ch]' -type f 2>/dev/null | \
		xargs -r $(CLANG_FORMAT) --dry-run --Werror

clean:
	rm -rf $(BUILD) $(BUILD_POSIX) $(BUILD_RELEASE) $(BUILD_ASAN) $(BUILD_TSAN) $(BUILD_FUZZ)
