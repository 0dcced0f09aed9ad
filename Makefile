# Query: `make run` starts a demo deployment, `make test` runs every test.
# Needs only the Rust toolchain; anything else is installed here.

CARGO ?= cargo
LISTEN ?= 127.0.0.1:8080
MACHINES ?= 1000
CLUSTERS ?= 20

.PHONY: all build run run-release test test-deps test-venv bench bench-full bench-run bench-deps bench-venv fuzz lint fmt check-fmt clippy clean

all: build

build:
	$(CARGO) build -p query-http -p query-client --bins

## The demo: the whole hierarchy in one process (simulated edges → 2 proxies → TLA/SQL, which
## also publishes this machine). Prints the console URL.
run: build
	$${CARGO_TARGET_DIR:-target}/debug/queryd demo --listen $(LISTEN) --machines $(MACHINES) --clusters $(CLUSTERS)

run-release:
	$(CARGO) run --release -p query-http --bin queryd -- demo --listen $(LISTEN) --machines $(MACHINES) --clusters $(CLUSTERS)

## Everything: unit tests, the SQL suite (sqllogictest), multi-process and browser tests.
## The binaries the multi-process tests start are built in the same invocation as the tests,
## so both get one feature set and DataFusion is compiled once.
test: test-deps
	$(CARGO) build --workspace --bins --tests
	$(CARGO) test --workspace --no-fail-fast

## Headless Chromium for the console test, dnsmasq (a real DNS server on loopback) for the
## aggregator-set test and the failover benchmark, Alertmanager for the alert receivers
## test, psql for the Postgres protocol test: Debian's packages, nothing downloaded on its
## own. Each entry is command:package.
TEST_DEBS = chromium:chromium dnsmasq:dnsmasq-base prometheus-alertmanager:prometheus-alertmanager psql:postgresql-client
BENCH_DEBS = dnsmasq:dnsmasq-base

test-deps: test-venv
	@$(call install_debs,$(TEST_DEBS))

## A real SMTP server for the alert e-mail test (aiosmtpd, run by integration/tools/smtp_sink.py)
## and a Postgres driver for the pg test (psycopg, run by integration/tools/pg_client.py).
test-venv:
	@.test-venv/bin/python -c 'import aiosmtpd, psycopg' 2>/dev/null || { python3 -m venv .test-venv && .test-venv/bin/pip install -q aiosmtpd 'psycopg[binary]'; }

bench-deps:
	@$(call install_debs,$(BENCH_DEBS))

define install_debs
missing=""; \
for e in $(1); do \
  c=$${e%%:*}; p=$${e#*:}; \
  command -v $$c >/dev/null 2>&1 || test -x /usr/sbin/$$c || missing="$$missing $$p"; \
done; \
if [ -n "$$missing" ]; then \
  echo "installing$$missing"; \
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
  || { echo "could not install$$missing (run as root, or install it)"; exit 1; }; \
fi
endef

## Benchmarks (release build): figures go to BENCHMARKS.md with machine, date and commit.
## BENCH_SCALE=0.1 for a quick run.
## `queryd` and the benchmarks of the list are built in one invocation (one feature set: one
## release build of DataFusion), and every `cargo bench --workspace` below resolves the same
## features. Only what the list runs is built: in a cold build of everything (36 min on 2
## cores, `cargo build --timings`), the fuzzer, the CLI client and `make bench-full`'s
## benchmarks were 319 s of compile units, the fuzzer's library 141 s and `history` 159 s.
## The tools (DuckDB's virtualenv, dnsmasq) install while cargo builds. Each step is timed;
## the last one (`run_time`) writes the times to BENCHMARKS.md.
## `make bench` (under 30 minutes from a fresh clone) runs BENCHES; `make bench-full` runs
## the longer ones (BENCHES_FULL) and the largest fleet (BENCH_FLEET_BIG machines): 250,000,
## issue 17's goal, with the simulator, the TLA and the SQL node on this machine's 24 GiB
## (about 2.5 GiB to spare at the tightest moment; BENCHMARKS.md, `fleet-big`), and goal 4's
## cold start of 70,000 machines BENCH_COLD_STARTS times from nothing (`fleet-cold-starts`,
## about 13 s each): one start is one draw.
BENCHES = edge_agent sql link_codec tla_merge fleet overload
# hierarchy and failover (aggregator sets' switch times, about 2 minutes together) moved
# here on 2026-12-04: a cold `make bench` took about 32 minutes on a 2-core host with them.
BENCHES_FULL = hierarchy failover tla_children link_tls alerts history fleet-big fleet-cold-starts
BENCH_FLEET_BIG ?= 250000
BENCH_COLD_STARTS ?= 10
# The bench targets of BENCH_LIST (fleet-big and fleet-cold-starts are the fleet bench) and
# run_time, which writes
# the steps' times.
BENCH_TARGETS = $(foreach b,$(sort $(patsubst fleet-%,fleet,$(BENCH_LIST)) run_time),--bench $(b))

bench:
	@$(MAKE) --no-print-directory bench-run BENCH_RUN=bench BENCH_LIST="$(BENCHES)"

bench-full:
	@$(MAKE) --no-print-directory bench-run BENCH_RUN=bench-full BENCH_LIST="$(BENCHES_FULL)"

bench-run:
	@set -e; steps=""; \
	build=warm; test -x $${CARGO_TARGET_DIR:-target}/release/queryd || build=cold; \
	t=$$(date +%s); \
	$(MAKE) --no-print-directory bench-venv bench-deps & tools=$$!; \
	$(CARGO) build --release --workspace --bin queryd $(BENCH_TARGETS); \
	wait $$tools || { echo "make $(BENCH_RUN): installing the tools failed"; exit 1; }; \
	n=$$(date +%s); steps="tools+build=$$((n - t))"; t=$$n; \
	for b in $(BENCH_LIST); do \
	  if [ "$$b" = fleet-big ]; then \
	    BENCH_COLD_STARTS= BENCH_FLEETS=$(BENCH_FLEET_BIG) $(CARGO) bench --workspace --bench fleet; \
	  elif [ "$$b" = fleet-cold-starts ]; then \
	    BENCH_COLD_STARTS=$(BENCH_COLD_STARTS) BENCH_FLEETS=70000 $(CARGO) bench --workspace --bench fleet; \
	  else \
	    BENCH_COLD_STARTS= $(CARGO) bench --workspace --bench $$b; \
	  fi; \
	  n=$$(date +%s); steps="$$steps $$b=$$((n - t))"; t=$$n; \
	done; \
	BENCH_RUN=$(BENCH_RUN) BENCH_STEPS="$$steps" BENCH_BUILD=$$build $(CARGO) bench --workspace --bench run_time

## DuckDB for the SQL benchmark's comparison, in a venv of its own (not needed otherwise).
## Pinned: the ratios move with DuckDB's version (2.0.1 from 2026-11-29 on).
bench-venv:
	@test -x .bench-venv/bin/python || { python3 -m venv .bench-venv && .bench-venv/bin/pip install -q duckdb==2.0.1; }

## Fuzzing (release build, FUZZING.md): FUZZ_INPUTS inputs per target (publish lines, link
## frames, SQL), each target stopping after FUZZ_SECONDS at most (SQL runs far fewer inputs
## per second). FUZZ_ARGS passes more, e.g. `--deep` for the SQL deep mode. `make test`
## runs a short budget of the same targets.
FUZZ_INPUTS ?= 1000000
FUZZ_SEED ?= 1
FUZZ_SECONDS ?= 900

fuzz:
	$(CARGO) build --release --workspace --bin queryfuzz
	$${CARGO_TARGET_DIR:-target}/release/queryfuzz --target all --inputs $(FUZZ_INPUTS) \
	  --seed $(FUZZ_SEED) --max-seconds $(FUZZ_SECONDS) $(FUZZ_ARGS)

lint: check-fmt clippy

check-fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p query-actors --lib --features system-alloc -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
