# Developer entry points. The two a newcomer needs: `make demo` and `make test` (see README).
# Both install what they need first (.ci/install-deps.sh is idempotent and quick when done).

CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)
TARGET_DIR := $(shell pwd)/target
BPF_OUT := $(TARGET_DIR)/bpf

.PHONY: all deps build release bpf test test-host test-vm test-cross cross lint demo bench size clean

all: build

deps:
	bash .ci/install-deps.sh

build:
	$(CARGO) build

release:
	$(CARGO) build --release --locked

# BPF objects for both byte orders (bpfel: x86/arm, bpfeb: big-endian MIPS routers), as build.rs
# built them (the one clang command line), copied out of cargo's OUT_DIR for inspection
# (llvm-objdump, bpftool, the VM verifier scenario).
bpf:
	@out=$$($(CARGO) build --locked --message-format=json 2>/dev/null | python3 -c 'import json,sys; \
	  print([m["out_dir"] for m in map(json.loads, sys.stdin) if m.get("reason") == "build-script-executed" \
	    and "/build/bpfqos-" in m.get("out_dir", "")][-1])') && \
	  mkdir -p $(BPF_OUT) && cp "$$out"/*.o "$$out"/bench/*.o $(BPF_OUT)/
	ls -l $(BPF_OUT)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	clang-format --dry-run --Werror bpf/*.c bpf/include/*.h bench/bpf/*.c

# Everything: lint, unit + integration tests (root-only tests run for real as root), the
# full-kernel VM scenarios (VLAN, PPPoE, CAKE, flowtable on Debian's 6.12), then the router
# builds with their tests under emulation and on a big-endian kernel.
test: deps lint test-host test-vm test-cross

test-host:
	$(CARGO) test --locked -- --test-threads=1

# Every test binary is built first: the VM scenarios run some of them inside the VM (tc_codec).
test-vm:
	$(CARGO) test --locked --no-run
	$(CARGO) test --locked --test vm -- --ignored --nocapture

# The routers' builds (issue 16, docs/openwrt.md): static musl bpfqos for aarch64, armv7 and
# big-endian MIPS with their sizes and .ipk packages (target/cross/ipk/); the tests that need no
# kernel under qemu-user for each; the data-path tests on Debian's big-endian s390x kernel
# (qemu-system-s390x). Incremental: target/cross and target/s390x keep what was built/fetched.
cross:
	bash .ci/cross-deps.sh
	bash openwrt/cross/build.sh aarch64 armv7 mips x86_64

test-cross:
	bash .ci/cross-deps.sh
	bash openwrt/cross/build.sh --tests aarch64 armv7 mips s390x

# A demo router in network namespaces: daemon, config, attach, traffic, status.
demo: deps release
	bash tests/demo/run.sh $(TARGET_DIR)/release/bpfqos

bench: deps release size
	bash bench/run.sh

# The host's release build (glibc, PIE, prebuilt std), and the package binaries of `make cross`
# that exist (musl, std rebuilt for size: what a router installs; `make cross` builds x86_64 too).
size: release
	@sz=$$(stat -c %s $(TARGET_DIR)/release/bpfqos); \
	  echo "release binary (stripped, $$(uname -m), glibc): $$sz bytes = $$((sz / 1024)) KiB; target < 3072 KiB"
	@for f in target/cross/*/size.txt; do [ -f "$$f" ] && echo "package binary: $$(cat "$$f")"; done; true

clean:
	$(CARGO) clean
