# Hangar: `make run` for a first machine, `make test` for everything.
SHELL := /bin/sh
CARGO ?= cargo
TARGET := x86_64-unknown-linux-gnu
# hangar-init runs inside any image's root filesystem, so it is linked statically.
INIT := target/init/$(TARGET)/release/hangar-init
export HANGAR_INIT := $(CURDIR)/$(INIT)

.PHONY: deps init build build-debug run test bench lint clean

deps:
	@./scripts/install-deps.sh

init:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build -p hangar-init --release \
		--target $(TARGET) --target-dir target/init

build: deps init
	$(CARGO) build --release -p hangar -p hangar-testkit
	@# By rename, never in place: running machines execute the installed init, and writing
	@# over a running binary fails with "Text file busy".
	cp $(INIT) target/release/.hangar-init.new
	mv -f target/release/.hangar-init.new target/release/hangar-init

build-debug: deps init
	$(CARGO) build -p hangar -p hangar-testkit

run: build
	@./scripts/run.sh

test: build-debug
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

bench: build
	@HANGAR_BENCH_DEPS=1 ./scripts/install-deps.sh
	$(CARGO) run --release -p hangar-bench --bin lifecycle
	$(CARGO) run --release -p hangar-bench --bin api
	$(CARGO) run --release -p hangar-bench --bin cli
	$(CARGO) run --release -p hangar-bench --bin pull
	$(CARGO) run --release -p hangar-bench --bin microvm
	$(CARGO) run --release -p hangar-bench --bin net

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) fmt --all -- --check

clean:
	$(CARGO) clean
