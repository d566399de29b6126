# Atrium developer commands. `make run` and `make test` work on a fresh
# Debian machine: scripts/services.sh reuses PostgreSQL and Redis already on
# loopback or starts (and if needed installs) private ones under .dev/.
SHELL := /bin/bash
GO ?= go
export CGO_ENABLED := 1

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)

PG_URL    ?= postgres://postgres@127.0.0.1:5432
REDIS_URL ?= redis://127.0.0.1:6379/0

export ATRIUM_TEST_DATABASE_URL ?= $(PG_URL)/postgres?sslmode=disable
export ATRIUM_TEST_REDIS_URL    ?= $(REDIS_URL)

.PHONY: all build run services test test-unit test-integration vet fmt bench clean

all: build

build: ## build bin/atrium
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/atrium .

services: ## start (or reuse) PostgreSQL and Redis on loopback
	@scripts/services.sh --db=atrium

run: build ## run Atrium at http://127.0.0.1:8080 in development mode
	@scripts/services.sh --db=atrium
	@echo "Atrium: open http://$${ATRIUM_HTTP_ADDR:-127.0.0.1:8080} in your browser (Ctrl-C stops it)"
	@if [ -n "$${DISPLAY:-}$${WAYLAND_DISPLAY:-}" ] && command -v xdg-open >/dev/null; then \
	  (sleep 2; xdg-open http://127.0.0.1:8080 >/dev/null 2>&1) & fi
	@if [ -z "$${ATRIUM_MASTER_KEY+set}$${ATRIUM_MASTER_KEY_FILE+set}" ]; then \
	  if [ ! -s .dev/master.key ]; then \
	    mkdir -p .dev && (umask 077; head -c 32 /dev/urandom | base64 > .dev/master.key) && \
	    echo "Generated a development master key in .dev/master.key"; \
	  fi; \
	  chmod 600 .dev/master.key; \
	  export ATRIUM_MASTER_KEY_FILE="$(CURDIR)/.dev/master.key"; \
	fi; \
	if (exec 3<>/dev/tcp/127.0.0.1/8090) 2>/dev/null; then \
	  echo "Simulated bank: reusing http://127.0.0.1:8090"; \
	else \
	  echo "Simulated bank: starting http://127.0.0.1:8090 (atrium simbank; logs in .dev/simbank.log)"; \
	  mkdir -p .dev && (./bin/atrium simbank --addr 127.0.0.1:8090 --p50 20ms --p99 150ms >.dev/simbank.log 2>&1 &); \
	fi; \
	export PATH="$(CURDIR)/bin:$$PATH" ATRIUM_ENV=development \
	 ATRIUM_HTTP_ADDR=$${ATRIUM_HTTP_ADDR:-127.0.0.1:8080} \
	 ATRIUM_PAYMENTS_CHANNELS=$${ATRIUM_PAYMENTS_CHANNELS:-simbank=http://127.0.0.1:8090} \
	 ATRIUM_PAYMENTS_TEST_CHANNELS=$${ATRIUM_PAYMENTS_TEST_CHANNELS:-simbank-test=http://127.0.0.1:8090} \
	 ATRIUM_GPU_BACKEND=$${ATRIUM_GPU_BACKEND:-$$(ldconfig -p 2>/dev/null | grep -q libnvidia-ml.so.1 && echo nvml || echo mock)} \
	 ATRIUM_DATABASE_URL=$${ATRIUM_DATABASE_URL:-$(PG_URL)/atrium?sslmode=disable} \
	 ATRIUM_REDIS_URL=$${ATRIUM_REDIS_URL:-$(REDIS_URL)}; \
	./bin/atrium admin create-user --email admin@atrium.local --name "Platform admin" --role platform_admin \
	  --generate-password --if-not-exists || exit 1; \
	exec ./bin/atrium serve

vet: ## go vet and gofmt check
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "not gofmt-ed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

test: ## everything: vet, unit, integration (PostgreSQL, Redis), browser tests (headless Chromium)
	@scripts/services.sh --browser
	@$(MAKE) --no-print-directory vet
	ATRIUM_TEST_REQUIRE_BROWSER=1 $(GO) test -race -count=1 -timeout 12m ./...

test-unit: ## the quick loop: no PostgreSQL, Redis or browser
	$(GO) test -short -count=1 ./...

bench: build ## benchmarks: Go micro-benchmarks and an HTTP load run (wrk), as ratios
	@scripts/services.sh --db=atrium
	@command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null)
	@scripts/bench.sh

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
