# UniRank developer commands. `make demo` and `make test` are the two that matter.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
ARTIFACT ?= build/artifact
PROFILE ?= profiles/cpu-realtime.toml
PORT ?= 50151

.PHONY: setup proto proto-check buf-lint lint test demo serve train clean docs

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	# torch first, pinned exactly: anything looser pulls a multi-GB CUDA build.
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e '.[train,dev,quality]'
	touch $@

setup: $(BIN)/.installed

proto: setup
	$(PYTHON) -m grpc_tools.protoc -Iprotos \
		--python_out=client --pyi_out=client --grpc_python_out=client \
		protos/unirank/v1/*.proto

# Stubs are committed; CI regenerates them and fails on any drift.
proto-check: proto
	git diff --exit-code -- client/unirank/v1

buf-lint:
	npx --yes @bufbuild/buf@1 lint

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy core/unirank cli/unirank client/unirank/client server/unirank training/unirank

test: setup
	$(BIN)/pytest -q

train: setup
	$(BIN)/unirank train --data synthetic --out $(ARTIFACT)

serve: setup
	@test -f $(ARTIFACT)/manifest.json || $(MAKE) train
	$(BIN)/unirank serve --profile $(PROFILE) --artifact $(ARTIFACT) --port $(PORT)

demo: setup
	$(PYTHON) -m unirank.cli.demo --artifact $(ARTIFACT) --profile $(PROFILE)

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache

docs: setup
	$(PYTHON) -m unirank.server.profile_docs docs/profiles.md

.PHONY: alerts
# deploy/prometheus/PROFILE.rules.yml: each profile's recording and alerting rules (docs/observability.md).
alerts: setup
	for profile in profiles/*.toml; do \
		$(BIN)/unirank alerts --profile $$profile --out deploy/prometheus/$$(basename $$profile .toml).rules.yml; \
	done

.PHONY: kpi-demo
# Online KPIs (docs/observability.md): the same simulated users (held-out data, position-biased
# clicks, feedback through RecordEvents) against the trained artifact and a random-scoring one
# (build/kpi-random, trained for one step); prints the per-task CTR / play rate / engagement table.
KPI_ARGS ?= --per-task 400
kpi-demo: setup
	@test -f $(ARTIFACT)/manifest.json || $(MAKE) train
	$(PYTHON) scripts/simulate_traffic.py demo --artifact $(ARTIFACT) --profile $(PROFILE) \
		--json build/kpi-demo.json $(KPI_ARGS)

.PHONY: bench
# Load tests, floors and the MLServer peer; not part of `make test` (see docs/benchmarks.md).
# BENCH_ARGS=--quick is a smoke run of a few seconds that writes under build/bench-quick.
bench: setup
	PYTHONPATH=bench $(PYTHON) -m unirank_bench $(BENCH_ARGS)

.PHONY: bench-scale
# Serving as the catalogue grows (issue #18): trains synthetic artifacts of 3k to 1M items under
# build/scale (kept between runs), then start-up, RSS, recall@200, p50/p99 and C=32 throughput per
# size into docs/benchmarks.md; SCALE_ARGS="--sizes 3000,30000" is the quick run.
SCALE_ARGS ?=
bench-scale: setup
	PYTHONPATH=bench $(PYTHON) -m unirank_bench.scale $(SCALE_ARGS)

.PHONY: bench-page
# A home page (1 notification + 10 category rows for one user) in one RecommendBatch against the
# same rows one call each: pages of 1, 5 and 11 rows, closed loop (docs/benchmarks.md).
bench-page: setup
	PYTHONPATH=bench $(PYTHON) -m unirank_bench.page --artifact $(ARTIFACT) $(PAGE_ARGS)

.PHONY: bench-impressions
# What writing each answer to the impression store costs a ranked request (none / memory / redis;
# docs/observability.md, "Online KPIs"); IMPRESSIONS_ARGS=--rounds 6.
bench-impressions: setup
	@test -f $(ARTIFACT)/manifest.json || $(MAKE) train
	PYTHONPATH=bench $(PYTHON) -m unirank_bench.impressions --artifact $(ARTIFACT) $(IMPRESSIONS_ARGS)

.PHONY: stress
# The long hardening runs (13,000 fuzzed RPCs, overload at 4x measured capacity, SIGTERM under load,
# every fault and attack) against real servers; writes docs/reliability.md. Not part of `make test`.
# STRESS_ARGS=--quick is a smoke run of seconds that writes build/reliability-quick.md.
stress: setup
	PYTHONPATH=bench $(PYTHON) -m unirank_stress $(STRESS_ARGS)

.PHONY: quality tune
# docs/quality.md: unified vs single-task, no-task-type, popularity and classic peers on MovieLens-small
# and on the sparse synthetic listening history, each trained with its tuned config (training/configs/,
# written by `make tune` from the validation split). no_task_type trains on seed 0 only (no target reads
# it; the report says so): the 3 seeds fit in about 30 minutes of an idle 2-core machine.
MOVIELENS ?= ../shared/data/movielens-small
QUALITY_ARGS ?= --seeds 3 --workers 2 --rows-per-task 3000 --ablation-seeds 1
quality: setup
	$(PYTHON) -m pip install -q -e '.[quality]'
	$(BIN)/unirank compare --data movielens:$(MOVIELENS) --config training/configs/movielens-small.json \
		$(QUALITY_ARGS) --json build/quality/movielens-small.json
	$(BIN)/unirank compare --data synthetic --size sparse --config training/configs/sparse.json \
		$(QUALITY_ARGS) --json build/quality/sparse.json
	$(PYTHON) -m unirank.training.quality docs/quality.md build/quality/movielens-small.json \
		build/quality/sparse.json

# training/configs/*.json: `unirank tune` (Optuna on the validation split) per data set of make quality.
TUNE_MINUTES ?= 10
tune: setup
	$(PYTHON) -m pip install -q -e '.[quality]'
	$(BIN)/unirank tune --data movielens:$(MOVIELENS) --budget-minutes $(TUNE_MINUTES) \
		--out training/configs/movielens-small.json
	$(BIN)/unirank tune --data synthetic --size sparse --budget-minutes $(TUNE_MINUTES) \
		--out training/configs/sparse.json

.PHONY: refit-demo
# The freshness loop (docs/deployment.md): a server logs RecordEvents events, they become training
# logs, a warm-start refit is published into the artifact repository and the server switches to it
# while a caller counts failed requests (must be 0). Writes build/refit-demo; REFIT_ARGS=--max-steps 200.
refit-demo: setup
	$(PYTHON) scripts/refit_loop.py $(REFIT_ARGS)

.PHONY: rollout-demo
# Canary rollouts per use-case (docs/rollouts.md): against a live server, a degraded version is
# refused by the offline gate, a version worse online for search is rolled back for search alone
# while the others reach 100 %, an A/A rollout promotes every use-case; 0 failed requests.
# Writes build/rollout-demo; ROLLOUT_ARGS=--threads 2.
rollout-demo: setup
	@test -f $(ARTIFACT)/manifest.json || $(MAKE) train
	$(PYTHON) scripts/rollout_demo.py --artifact $(ARTIFACT) $(ROLLOUT_ARGS)
