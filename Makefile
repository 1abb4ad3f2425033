# shm: make test (vet + race tests), make demo, make bench, make lint.
GO ?= go

.PHONY: all test vet lint demo bench build fuzz

all: lint test

build:
	CGO_ENABLED=0 $(GO) build ./...

vet:
	$(GO) vet ./...

lint: vet
	@out=$$(gofmt -l . | grep -v '^vendor/'); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

test: vet build
	GORACE=atexit_sleep_ms=0 $(GO) test -race -timeout 60m ./...

demo:
	$(GO) run ./cmd/shmdemo

bench:
	./bench/run.sh
