# ordersys — developer entry points. `make test` is the test command CI runs.
CARGO ?= cargo

.PHONY: compose-test run test test-unit mutants mutants-changed coverage services-up kafka-down dev-up dev-down lint fmt doc bench bench-ab bench-peers fuzz-api api-clients publish-check outside-user features deploy-check proto build up down migrate smoke example check chaos chaos-short soak

## The whole system in one process, embedded (SQLite + in-process bus) on :8080.
run:
	$(CARGO) run --release -p ordersys

## What ships — the image's binaries (deployments/docker/Dockerfile) — is always built
## on its own: a test-only feature another package turns on (the gateway's `bench`, for
## gateway-bench) never reaches it, and the end-to-end tests run exactly these binaries
## (scripts/check-features proves it with `cargo tree -e features`).
PRODUCT = -p ordersys-user -p ordersys-order -p ordersys-payment -p ordersys-gateway -p ordersys

## Run the whole test suite (unit, integration against real MariaDB/Redis/Kafka,
## doctests) of every crate, starting the servers first if they are down and installing
## the tools the tests run (the broker, the Prometheus exporters, schemathesis).
test: services-up
	scripts/prometheus-tools >/dev/null
	$(CARGO) build --bins $(PRODUCT)
	$(CARGO) test --workspace --all-features --no-fail-fast
	scripts/fuzz-api
	scripts/api-clients

## The REST API fuzzed from its OpenAPI document (schemathesis), against services it
## starts itself, or the gateway at BASE_URL. Part of `make test`.
fuzz-api:
	scripts/fuzz-api

## The OpenAPI document linted (Redocly), and Python and TypeScript clients generated
## from it running the whole flow, typed, against the one-process system. Part of
## `make test`.
api-clients:
	scripts/api-clients

## Mutation testing of the SDK crates (cargo-mutants): every crate, or MUTANTS_PACKAGES;
## fails below 90 % caught per crate. docs/TESTING.md has the latest results.
mutants: services-up
	scripts/mutants $(MUTANTS_PACKAGES)

## Only the mutants in the SDK lines changed since the last release tag (else the last
## commit), bounded; fails on any missed. Part of .ci/run.
mutants-changed: services-up
	scripts/mutants --changed

## Line coverage of the SDK crates (cargo-llvm-cov), per crate and per file.
coverage: services-up
	scripts/coverage

## Only what needs no server: default features, memory backends.
## What needs no server at all: every crate's unit tests, the memory and SQLite
## integration tests, the SDK doctests. The server URLs point at a closed port, so a
## test that quietly needed one fails here instead of passing on a developer's machine.
## (Unit tests that do need the test Redis live in modules named `with_redis`.)
NO_SERVERS = REDIS_URL=redis://127.0.0.1:1/ DATABASE_URL=mysql://root@127.0.0.1:1/none \
	DATABASE_SERVER_URL=mysql://root@127.0.0.1:1 KAFKA_BROKERS=127.0.0.1:1
test-unit:
	$(NO_SERVERS) $(CARGO) test --workspace --lib --all-features -- --skip with_redis
	$(NO_SERVERS) $(CARGO) test -p ordersys-authz --test tokens
	$(NO_SERVERS) $(CARGO) test -p ordersys-outbox --all-features --test memory --test sqlite
	$(NO_SERVERS) $(CARGO) test -p ordersys-saga --all-features --test orchestrator --test sqlite
	$(NO_SERVERS) $(CARGO) test --doc -p ordersys-outbox -p ordersys-saga -p ordersys-authz -p ordersys-resilience --all-features

## Start MariaDB, Redis and the local Kafka broker if they are not running.
services-up:
	scripts/services-up

## Run the services as background processes against the local servers; returns once
## the gateway on :8080 is ready.
dev-up:
	scripts/dev-up

## Stop what dev-up started.
dev-down:
	scripts/dev-down

## Stop the local Kafka broker started by services-up.
kafka-down:
	scripts/kafka-down

SDK_CRATES := ordersys-resilience ordersys-authz ordersys-outbox ordersys-saga

## fmt --check, clippy with warnings as errors, and each SDK crate building on its own
## with no default features (a user who wants only the breaker compiles nothing else).
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	scripts/check-features
	# The peers of bench/peers (not run in CI): at least they parse.
	bash -n bench/peers/run && bash -n bench/peers/install
	node --check bench/peers/restate/saga.mjs
	python3 -c 'import ast, sys; ast.parse(open(sys.argv[1]).read())' bench/peers/dbos/app.py

## The SDK crates as the crates registry would take them: packaged (what ships, README
## included, test keys not), then each package built on its own from the package, in
## dependency order, against the others' packages (`cargo publish --dry-run`).
## Its own target directory, and our crates' artefacts wiped first: cargo takes a crate
## from a registry as immutable, so a package verified in an earlier run (same name and
## version, other source) would otherwise be reused as it was.
PUBLISH_TARGET = $${CARGO_TARGET_DIR:-target}-publish
publish-check:
	rm -rf $(PUBLISH_TARGET)/package $(PUBLISH_TARGET)/debug/.fingerprint/ordersys-* \
		$(PUBLISH_TARGET)/debug/deps/*ordersys_* $(PUBLISH_TARGET)/debug/deps/*saga_core* \
		$(PUBLISH_TARGET)/debug/deps/*outbox* $(PUBLISH_TARGET)/debug/deps/*authz* \
		$(PUBLISH_TARGET)/debug/deps/*resilience*
	CARGO_TARGET_DIR=$(PUBLISH_TARGET) $(CARGO) publish --dry-run --allow-dirty $(foreach c,$(SDK_CRATES),-p $(c))

## A crate outside the workspace using the four SDK crates from their READMEs, by package
## name: built and run (it needs no server).
outside-user:
	$(CARGO) run --quiet --manifest-path tests/outside-user/Cargo.toml

## Each feature of each SDK crate compiles on its own (also part of `make lint`).
features:
	scripts/check-features

## The deployment artefacts (Dockerfile, compose, workflows, provisioning) validated
## with pinned tools: hadolint, the compose schema, actionlint. Part of .ci/run.
deploy-check:
	scripts/check-deploy

## Compile the .proto files (protox, no system protoc; also part of every build).
proto:
	$(CARGO) build -p ordersys-proto

## The image (needs a Docker engine): every binary, the command picks the service.
IMAGE ?= ordersys:dev
build:
	docker build -f deployments/docker/Dockerfile -t $(IMAGE) .

## The reference deployment with compose (v2 or docker-compose 1.29; needs a Docker
## engine): development certificates and token keys (a service's own .pem/.key, ca.pem
## and jwt.pub are 0644 — the containers run as uid 10001 — and only those are mounted,
## jwt.key into the user service only; ca.key stays 0600 and is never mounted) and
## secrets (scripts/compose-secrets: deployments/compose/.env, 0600 — MySQL root and a
## user per service, Redis users, ADMIN_TOKEN, SAGA_KEY — and the Redis ACL file) on
## first use, then
## everything up and healthy. OFFLINE=1: no image registry — infra stand-ins and base
## images built locally (scripts/offline-images), see README "Deploy".
OFFLINE ?= 0
COMPOSE = OFFLINE=$(OFFLINE) scripts/compose
up:
	scripts/docker-engine
	scripts/dev-certs deployments/compose/certs >/dev/null
	chmod 0755 deployments/compose/certs
	cd deployments/compose/certs && chmod 0644 ca.pem user.* order.* payment.* gateway.* jwt.* && chmod 0600 ca.key
	scripts/compose-secrets
	if [ "$(OFFLINE)" = 1 ]; then scripts/offline-images; fi
	ORDERSYS_IMAGE=$(IMAGE) $(COMPOSE) up -d --build
	OFFLINE=$(OFFLINE) scripts/compose-wait 300

## Stop the deployment; `make down V=1` also removes its volumes (the data).
down:
	$(COMPOSE) down $(if $(filter 1,$(V)),-v,)

## The reference deployment on a real Docker engine (installed and started if
## needed; offline stand-ins when no image registry answers): fresh `make up`, the REST
## walk-through, crashes and network partitions of containers under load, the fault
## suite's invariants, `make down V=1` leaving nothing. Part of .ci/run.
compose-test:
	scripts/compose-test

## Apply every service's migrations as a step of its own (each also migrates at start):
## `ordersys-{user,order,payment} migrate` in the compose deployment.
migrate:
	for s in user order payment; do $(COMPOSE) run --rm $$s ordersys-$$s migrate || exit 1; done

## Place and confirm one order through the REST API of a running deployment.
BASE_URL ?= http://127.0.0.1:8080
smoke:
	BASE_URL=$(BASE_URL) scripts/smoke

## Format the code.
fmt:
	$(CARGO) fmt --all

## Build the API docs and fail on broken links; then the SDK crates the way docs.rs
## builds them (all features, `--cfg docsrs`, nightly doc features — through
## RUSTC_BOOTSTRAP on a stable toolchain), in a target directory of its own so the
## flags do not invalidate the main build.
DOCSRS_TARGET = $${CARGO_TARGET_DIR:-target}-docsrs
doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --all-features
	CARGO_TARGET_DIR=$(DOCSRS_TARGET) RUSTC_BOOTSTRAP=1 RUSTDOCFLAGS="--cfg docsrs -D warnings" \
		$(CARGO) doc --no-deps --all-features $(foreach c,$(SDK_CRATES),-p $(c))

## Everything docs/BENCHMARKS.md reports, in one run (≈ 16 minutes on 2 cores): the SDK
## hot paths beside `failsafe` and bare `jsonwebtoken` (criterion); the outbox relay
## against a plain producer and a naive relay; then the whole system, separate services
## (with the raw commit rate of the same MariaDB) and embedded, each on fresh servers of
## its own, measured after a warm-up, with CPU per order per process.
CRITERION = -- --warm-up-time 1 --measurement-time 3
BENCH_E2E = $${CARGO_TARGET_DIR:-target}/release/chaos --faults none --cancel-percent 0 --initial 1000000000 --orders 1000000000
bench:
	$(CARGO) bench -p ordersys-resilience --bench resilience $(CRITERION)
	$(CARGO) bench -p ordersys-authz --bench tokens $(CRITERION)
	$(CARGO) bench -p ordersys-saga --bench saga $(CRITERION)
	$(CARGO) bench -p ordersys-outbox --bench relay $(CRITERION)
	scripts/kafka-up --install-only
	$(CARGO) build --release --bins $(PRODUCT)
	$(CARGO) build --release -p ordersys-bench --bins
	$(CARGO) build --release -p ordersys-e2e --bin chaos
	$${CARGO_TARGET_DIR:-target}/release/relay-bench --rows 100000 --profile-rounds 5
	# The gateway's security layers: GET /api/v1/orders/{id} with and without them.
	$${CARGO_TARGET_DIR:-target}/release/gateway-bench --clients 32 --seconds 8 --warmup 2 --rounds 3
	# Separate services: latency with one client, throughput with 16 and 64.
	$(BENCH_E2E) --clients 1 --seconds 25 --warmup 10 --poll-ms 1
	$(BENCH_E2E) --clients 16 --seconds 35 --warmup 15 --poll-ms 100
	$(BENCH_E2E) --clients 64 --seconds 45 --warmup 15 --poll-ms 100 --slap 20000
	# Embedded (one process, SQLite): the same, then 64 clients with SQLITE_SYNCHRONOUS=normal.
	$(BENCH_E2E) --embedded --clients 1 --seconds 20 --warmup 5 --poll-ms 1
	$(BENCH_E2E) --embedded --clients 16 --seconds 20 --warmup 5 --poll-ms 1
	$(BENCH_E2E) --embedded --clients 64 --seconds 20 --warmup 5 --poll-ms 1
	SQLITE_SYNCHRONOUS=normal $(BENCH_E2E) --embedded --clients 1 --seconds 20 --warmup 5 --poll-ms 1
	SQLITE_SYNCHRONOUS=normal $(BENCH_E2E) --embedded --clients 64 --seconds 20 --warmup 5 --poll-ms 1

## The end-to-end lines of `bench`, two revisions side by side in the same hour, alternating:
## `make bench-ab OLD=<rev> [NEW=<rev>]` (docs/BENCHMARKS.md, "Issue #28").
bench-ab:
	bench/ab $(OLD) $(or $(NEW),HEAD)

## ordersys beside Restate and DBOS (bench/peers): the same order saga on each, the same
## load generator (saga-bench), 1 and 64 clients, one table (≈ 8 minutes; installs the
## pinned peers from npm and PyPI on first use). docs/BENCHMARKS.md, "Side by side".
bench-peers:
	bench/peers/run

## The fault suite, long run: the separate services on a MariaDB, Redis and Kafka broker
## of their own, 16 clients placing orders while services and servers are killed with
## SIGKILL and restarted; then every invariant (docs/RELIABILITY.md). Release build.
CHAOS_ARGS ?= --clients 16 --orders 10000 --seconds 900 --faults all --initial 2000000
chaos:
	scripts/kafka-up --install-only
	$(CARGO) build --release --bins $(PRODUCT)
	$(CARGO) build --release -p ordersys-e2e --bin chaos
	$${CARGO_TARGET_DIR:-target}/release/chaos $(CHAOS_ARGS)

## Staying power (issue #33, item 4): 64 clients for SOAK_SECONDS (1800) on the separate
## services, no faults, on the durable broker (Tansu built with SQLite storage, ≈ 10
## minutes to build once; its log grows all run long), every process's memory sampled
## every 30 s; the `soak:` line has orders/s minute by minute, the last and slowest
## minute against the first, and each process's memory first → peak → last.
SOAK_SECONDS ?= 1800
soak:
	$(CARGO) build --release --bins $(PRODUCT)
	$(CARGO) build --release -p ordersys-e2e --bin chaos
	TANSU_STORAGE=sqlite TANSU_BIN="$$(scripts/cargo-tool tansu 0.6.0 --no-default-features --features libsql)/tansu" \
	  $(BENCH_E2E) --clients 64 --seconds $(SOAK_SECONDS) --warmup 15 --soak

## The short fault run CI does (debug build, about two minutes).
CHAOS_SHORT_ARGS ?= --clients 8 --seconds 60 --faults all --every 4-7 --deadline 10 --settle 120 --initial 2000000
chaos-short:
	scripts/kafka-up --install-only
	$(CARGO) build --bins $(PRODUCT)
	$(CARGO) build -p ordersys-e2e --bin chaos
	# Core dumps on: a service that crashes gets its backtrace in the log (needs gdb).
	ulimit -c unlimited 2>/dev/null || true; $${CARGO_TARGET_DIR:-target}/debug/chaos $(CHAOS_SHORT_ARGS)

## Run the in-memory saga example.
example: services-up
	$(CARGO) run -p example-saga-in-memory
	$(CARGO) run -p example-saga-sqlite
	$(CARGO) run -p example-trip-booking
	$(CARGO) run -p example-axum-jwt
	$(CARGO) run -p example-outbox-mysql-kafka
	$(CARGO) run -p example-tonic-resilience

## Everything CI checks.
check: lint test doc
