# Stave build, run and test entry points. Needs only Go and, for `make deps`
# (run by `make test`), Debian's apt.

GO       ?= go
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
BIN      := bin/stave
DATA     ?= ./stave-data
PORTAL   ?= [::]:3260
# HOST is what initiators on this machine use to reach PORTAL.
HOST     ?= 127.0.0.1
PORT     ?= $(lastword $(subst :, ,$(PORTAL)))
API      := unix:$(DATA)/stave.sock
FUZZTIME ?= 60s
# qemu-block-extra holds qemu-io/qemu-img's iscsi:// driver (only a Recommends of qemu-utils).
DEB_DEPS := libiscsi-bin tgt qemu-system-x86 qemu-utils qemu-block-extra debootstrap sg3-utils e2fsprogs cpio kmod fio
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_IQN := iqn.2026-11.dev.stave:demo

.PHONY: all build run deps test unit fmt-check vet fuzz-short e2e conformance conformance-pool fuzz bench bench-pool package clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/stave

# run starts the daemon in the foreground with a 1 GiB demo volume.
run: build
	@set -eu; mkdir -p $(DATA); \
	$(BIN) serve --config /dev/null --data-dir $(DATA) --portal '$(PORTAL)' --api $(API) & pid=$$!; \
	trap 'wait $$pid; exit 0' INT; \
	trap 'kill -TERM $$pid 2>/dev/null; wait $$pid; exit 0' TERM; \
	i=0; until $(BIN) --api $(API) volume list >/dev/null 2>&1; do \
		i=$$((i+1)); if [ $$i -gt 100 ] || ! kill -0 $$pid 2>/dev/null; then \
			echo "stave serve did not start (see the log above)" >&2; kill $$pid 2>/dev/null; exit 1; fi; \
		sleep 0.1; done; \
	$(BIN) --api $(API) volume show demo >/dev/null 2>&1 || $(BIN) --api $(API) volume create demo --size 1GiB; \
	echo; \
	echo "Stave is serving target $(DEMO_IQN) (LUN 0) on $(PORTAL)."; \
	echo "From this machine, as root (apt-get install open-iscsi):"; \
	echo "  iscsiadm -m discovery -t sendtargets -p $(HOST):$(PORT)"; \
	echo "  iscsiadm -m node -T $(DEMO_IQN) -p $(HOST):$(PORT) --login"; \
	echo "  lsblk    # a new 1 GiB disk"; \
	echo "  iscsiadm -m node -T $(DEMO_IQN) -p $(HOST):$(PORT) --logout"; \
	echo "CLI: $(BIN) --api $(API) volume list | session list | volume create NAME --size 1GiB"; \
	echo "Press Ctrl-C to stop."; echo; \
	wait $$pid

# deps installs the Debian packages the end-to-end and conformance tests use;
# quiet and idempotent when they are all there.
deps:
	@missing=""; for p in $(DEB_DEPS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

fmt-check:
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './.git/*' -not -path './.cache/*')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# unit runs every package's tests with the race detector, end-to-end suites excluded;
# the pool's crash and fault suite (kill -9 loops, power cuts) runs without it, as
# the detector slows its bounded iterations several-fold.
unit:
	$(GO) test -race -timeout 10m $$($(GO) list ./... | grep -v -e '/tests/' -e '/pool/faulttest')
	$(GO) test -count=1 -timeout 15m ./pool/faulttest

# fuzz-short runs every Fuzz target in the repository for 5 s each.
fuzz-short:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=5s

# fuzz runs every Fuzz target for FUZZTIME (default 60s) each.
fuzz:
	GO=$(GO) bash tools/fuzz.sh $(FUZZTIME)

e2e: build
	STAVE_E2E=1 $(GO) test -count=1 -timeout 25m ./tests/...

test: deps build fmt-check vet unit fuzz-short e2e

# conformance runs libiscsi's suite against Stave and tgt; extra options in CONFORMANCE_ARGS.
conformance: build
	bash tools/conformance/run.sh --stave-bin $(BIN) $(CONFORMANCE_ARGS)

# conformance-pool is conformance on a 2+1 pool volume; it rewrites docs/conformance-pool.md.
conformance-pool: build
	bash tools/conformance/run.sh --stave-bin $(BIN) --pool --report $(CONFORMANCE_ARGS)

# bench runs the matrix of Stave (file volume and 2+1 pool volume) against tgt, with QD1
# latency percentiles, and rewrites the results in docs/benchmarks.md; extra options
# (e.g. -runs 5) in BENCH_ARGS.
bench: deps build
	$(GO) run ./tools/bench -stave-bin $(BIN) -out docs/benchmarks.md $(BENCH_ARGS)

# bench-pool measures the pool (1+0, 2+1, 4+2) against the raw files under it: fio,
# go test -bench and iSCSI; it rewrites its own section of docs/benchmarks.md.
bench-pool: deps build
	$(GO) run ./tools/bench -layouts 1+0,2+1,4+2 -stave-bin $(BIN) -out docs/benchmarks.md $(BENCH_ARGS)

# package builds the static binary as BIN and the .deb with nfpm into DIST (pinned: later
# versions do not build from the module proxy). tests/e2e/package_test.go runs this target
# with BIN and DIST in a scratch directory, then installs the .deb with dpkg.
NFPM        ?= $(GO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
PKG_VERSION ?= $(shell v=$$(git describe --tags --match 'v[0-9]*' 2>/dev/null) && echo "$${v#v}" | sed 's/-\([0-9]*\)-g/+\1.g/' || echo 0.0.0~git$$(git rev-parse --short HEAD))
PKG_ARCH    ?= $(shell $(GO) env GOARCH)
DIST        ?= dist
package:
	rm -rf $(DIST) && mkdir -p $(DIST)
	CGO_ENABLED=0 GOOS=linux GOARCH=$(PKG_ARCH) $(GO) build -trimpath -ldflags=-s -o $(BIN) ./cmd/stave
	STAVE_BIN=$(BIN) STAVE_VERSION=$(PKG_VERSION) GOARCH=$(PKG_ARCH) $(NFPM) pkg --packager deb --config packaging/nfpm.yaml --target $(DIST)/
	dpkg-deb -c $(DIST)/stave_*.deb

clean:
	rm -rf bin dist
