# shm: make test (vet + race tests), make demo, make bench, make lint (gofmt, vet, cross-builds).
GO ?= go

.PHONY: all test vet lint cross demo bench build fuzz

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

test: vet build
	GORACE=atexit_sleep_ms=0 $(GO) test -race -timeout 60m ./...

demo:
	$(GO) run ./cmd/shmdemo

bench:
	./bench/run.sh
