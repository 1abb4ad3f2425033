# shm: make test (vet + race tests), make demo, make bench, make lint (gofmt, vet, cross-builds).
GO ?= go

.PHONY: all test test32 vet lint cross demo bench build fuzz

# Every Linux architecture Go supports: the library must build on each.
ARCHS := 386 amd64 arm arm64 loong64 mips mipsle mips64 mips64le ppc64 ppc64le riscv64 s390x

all: lint test

build:
	CGO_ENABLED=0 $(GO) build ./...

vet:
	$(GO) vet ./...

# Cross-builds for every architecture, and vet (tests included) for a
# 32-bit and a big 64-bit one.
cross:
	@for a in $(ARCHS); do CGO_ENABLED=0 GOOS=linux GOARCH=$$a $(GO) build ./... || { echo "build failed for GOARCH=$$a"; exit 1; }; done
	CGO_ENABLED=0 GOOS=linux GOARCH=386 $(GO) vet ./...
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) vet ./...

lint: vet cross
	@out=$$(gofmt -l . | grep -v '^vendor/'); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

test: vet build test32
	GORACE=atexit_sleep_ms=0 $(GO) test -race -timeout 60m ./...

# The library and the conformance suite as a 32-bit process (386 binaries
# run on an amd64 kernel), so that CI runs what only 32-bit code paths do.
test32:
	@if ! GOARCH=386 $(GO) test -count=1 -run '^$$' ./internal/fdseg >/dev/null 2>&1; then \
		echo "test32: skipped: this kernel cannot run 386 binaries (no IA32 emulation)"; \
	else \
		echo "GOARCH=386 $(GO) test -short ..."; \
		GOARCH=386 $(GO) test -short -count=1 -timeout 20m . ./backend/... ./conformance ./internal/sys ./internal/dirobj ./internal/fdseg; \
	fi

demo:
	$(GO) run ./cmd/shmdemo

bench:
	./bench/run.sh
