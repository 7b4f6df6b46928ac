# The two commands of the README, and a few more.
.PHONY: serve test test-slow lint docs docs-serve references lock lock-upgrade container-test container-test-gpu bench bench-smoke bench-page soak fuzz audit

serve:            ## install, export the default ImageNet model (once), run the server on :8000
	scripts/serve.sh

test:             ## install what the tests need, run the test suite (all but the tests marked slow)
	scripts/test.sh -m "not slow"

test-slow:        ## the tests marked slow (minutes each: training, schemathesis, benchmark dry runs, the short soak)
	scripts/test.sh -m slow

lint:             ## ruff and mypy
	scripts/bootstrap.sh export,cpu,dev
	.venv/bin/ruff check app model_card model_export harness tests bench reliability scripts docker client
	.venv/bin/ruff format --check app model_card model_export harness tests bench reliability scripts docker client
	.venv/bin/mypy
	.venv/bin/mypy --strict client/imgserve_client
	.venv/bin/mypy --strict model_export

docs:             ## the documentation site into site/, strict: a broken link or a page missing from the nav fails
	scripts/bootstrap.sh docs
	.venv/bin/mkdocs build --strict

docs-serve:       ## the documentation site on http://127.0.0.1:8002/, rebuilt on every edit
	scripts/bootstrap.sh docs
	.venv/bin/mkdocs serve --strict --dev-addr 127.0.0.1:8002

references:       ## regenerate docs/reference/ (settings, metrics, routes) from the code
	scripts/bootstrap.sh export,cpu,dev
	.venv/bin/python scripts/references.py

lock:             ## regenerate requirements.lock after editing dependencies (keeps the pins that still fit)
	scripts/lock.sh

lock-upgrade:     ## every locked package to the newest version pyproject.toml allows
	scripts/lock.sh --upgrade

container-test:   ## build the image with podman, compose up 2 replicas + nginx, fail one over, compose down
	scripts/bootstrap.sh export,cpu,dev
	scripts/container-test.sh

container-test-gpu: ## build the GPU image (onnxruntime-gpu, CUDA, cuDNN; ~1.2 GB download) with podman, start it without a GPU: serves on the CPU, IMGSERVE_REQUIRE_CUDA=true fails in one line
	scripts/bootstrap.sh export,cpu,dev
	scripts/container-test-gpu.sh

bench:            ## the full CPU benchmark, open-loop sweep included (35 points; 25 took 8 min on 2 cores): bench/results/DATE/report.md, results.json, plots
	scripts/bootstrap.sh export,cpu,dev
	.venv/bin/python -m bench run --out bench/results/$$(date +%F)

bench-smoke:      ## seconds of each benchmark piece, as CI runs it
	scripts/bootstrap.sh export,cpu,dev
	.venv/bin/python -m bench run --smoke --out bench/results/smoke

bench-page:       ## the demo page's weight and its time from drop to bars, in headless chromium
	scripts/bootstrap.sh export,cpu,dev
	test -f models/default/model.onnx || .venv/bin/python -m model_export default --output-dir models/default
	.venv/bin/python -m bench.page

soak:             ## 10 minutes at 70% of measured capacity: errors, latency, CPU and stalls per minute, RSS; PASS, HOST NOISE or FAIL
	scripts/bootstrap.sh export,cpu,dev
	test -f models/default/model.onnx || .venv/bin/python -m model_export default --output-dir models/default
	.venv/bin/python -m reliability.soak

fuzz:             ## schemathesis against the live OpenAPI schema, open and with API keys (>1,000 cases each)
	scripts/bootstrap.sh export,cpu,dev
	.venv/bin/python -m reliability.fuzz_api

audit:            ## pip-audit of the serving dependencies (base + cpu extra)
	scripts/bootstrap.sh export,cpu,dev
	.venv/bin/python -m reliability.audit_deps
