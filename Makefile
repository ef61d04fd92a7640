# warren-appliance build, test and release entry points.
SHELL   := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null | sed 's/^v//' || echo 0.0.0-dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
DATE    ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
PKG     := github.com/warren-appliance/warren
LDFLAGS := -s -w -X $(PKG)/internal/buildinfo.Version=$(VERSION) \
           -X $(PKG)/internal/buildinfo.Commit=$(COMMIT) \
           -X $(PKG)/internal/buildinfo.Date=$(DATE)
# grpcnotrace: containerd's gRPC client would otherwise link golang.org/x/net/trace
# and html/template (~370 KB) for debug pages the appliance never serves.
GOBUILD := CGO_ENABLED=0 go build -trimpath -tags grpcnotrace -ldflags '$(LDFLAGS)'
# One binary: warren-appliance is a symlink to warren, which runs the
# daemon when called by that name.
PLATFORMS := linux/amd64 linux/arm64 linux/arm

.PHONY: all deps demo-deps build cross test test-arm bench bench-firewall lint fuzz demo package image test-boot clean

all: build

# What the tests need (tools/install-deps.sh says what and why); the demo
# needs less, the image more (tools/install-image-deps.sh).
deps:
	@./tools/install-deps.sh test

demo-deps:
	@./tools/install-deps.sh demo

build:
	@mkdir -p bin
	$(GOBUILD) -o bin/warren ./cmd/warren
	ln -sf warren bin/warren-appliance

# 32-bit ARM is built with GOARM=6 so one binary runs on every Raspberry Pi.
cross:
	@set -e; for p in $(PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; dir=bin/$$os-$$arch; mkdir -p $$dir; \
		echo "build $$dir/warren"; \
		GOOS=$$os GOARCH=$$arch GOARM=6 $(GOBUILD) -o $$dir/warren ./cmd/warren; \
		ln -sf warren $$dir/warren-appliance; \
	done

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...

# The whole suite, as root: unit tests, kernel tests in network namespaces,
# real containerd, the multi-node integration suite.
test: deps lint build
	go test -count=1 -p 2 -timeout 50m ./...
	$(MAKE) test-arm

# The config and tunnel tests as 32-bit ARM (GOARM=6, a Pi Zero) under
# qemu-user: 64-bit atomics misaligned on 32-bit platforms panic there.
test-arm:
	CGO_ENABLED=0 GOARCH=arm GOARM=6 WARREN_TEST_EMULATOR=qemu-arm-static \
		go test -count=1 -exec qemu-arm-static -timeout 10m ./configs/ ./tunnel/

# Benchmarks that compare against a baseline run side by side.
bench: deps build
	go test -count=1 -p 1 -run '^$$' -bench . -benchtime 1x -timeout 30m ./...

# The firewall backends side by side (root: two network namespaces): 1000
# services x 3 endpoints plus 200 policies over 1000 tasks, full sync and one
# change, iptables and nftables, in one run.
bench-firewall: deps
	@go test -count=1 -p 1 -run '^$$' -bench '^BenchmarkFirewall$$' -benchtime 1x -timeout 10m ./hostfw/ | grep -E '^(full sync|slow canary|FAIL|---)'

# The fuzzers: the config loader (60 s), the node API's request decoders
# (join, report, self, secret values), the --secret/--config parser, the
# cluster map decoder and the relay's frame and
# datagram decoders (30 s each).
fuzz:
	go test -run '^$$' -fuzz FuzzLoad -fuzztime 60s ./configs/
	go test -run '^$$' -fuzz '^FuzzJoinRequest$$' -fuzztime 30s ./cluster/
	go test -run '^$$' -fuzz '^FuzzReportRequest$$' -fuzztime 30s ./cluster/
	go test -run '^$$' -fuzz '^FuzzSelfRequest$$' -fuzztime 30s ./cluster/
	go test -run '^$$' -fuzz '^FuzzValuesRequest$$' -fuzztime 30s ./cluster/
	go test -run '^$$' -fuzz '^FuzzParseFileRef$$' -fuzztime 30s ./cluster/
	go test -run '^$$' -fuzz '^FuzzMapDecode$$' -fuzztime 30s ./cluster/clustermap/
	go test -run '^$$' -fuzz '^FuzzReadFrame$$' -fuzztime 30s ./relay/
	go test -run '^$$' -fuzz '^FuzzParseUDP$$' -fuzztime 30s ./relay/

# A local three-node cluster in namespaces with a 3-replica service; Ctrl-C
# tears it down and exits 0. The demo is built and run as a binary: `go run`
# would exit 1 on Ctrl-C whatever the program does.
demo: demo-deps build
	$(GOBUILD) -o bin/warren-demo ./integration/demo
	./bin/warren-demo -bin bin

package: cross
	VERSION=$(VERSION) sh packaging/build.sh

# The Raspberry Pi appliance image (arm64): Debian packages plus the arm64
# .deb, built under qemu-user (packaging/README.md, "The appliance image").
PKG_VERSION = $(shell sh packaging/build.sh --print-version $(VERSION))
IMAGE ?= dist/warren-appliance-$(PKG_VERSION)-arm64.img

image:
	@./tools/install-image-deps.sh
	$(MAKE) cross PLATFORMS=linux/arm64
	VERSION=$(VERSION) ARCHS=arm64 PACKAGERS=deb sh packaging/build.sh
	VERSION=$(PKG_VERSION) OUT=$(IMAGE) sh packaging/image/build.sh

# Boots copies of the image as emulated arm64 boards (slow: TCG); not part
# of `make test` (packaging/README.md says why). BOOT_ARGS=-boards=2 etc.
test-boot:
	@./tools/install-image-deps.sh
	@test -f $(IMAGE) || $(MAKE) image
	go run ./packaging/image/boottest -image $(IMAGE) $(BOOT_ARGS)

clean:
	rm -rf bin dist
