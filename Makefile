# The two commands of the README, and a few more.
.PHONY: serve test lint container-test bench bench-smoke

serve:            ## install, export the default ImageNet model (once), run the server on :8000
	scripts/serve.sh

test:             ## install what the tests need, run the whole test suite
	scripts/test.sh

lint:             ## ruff and mypy
	scripts/bootstrap.sh export,cpu,dev
	.venv/bin/ruff check app model_export tests bench reliability
	.venv/bin/ruff format --check app model_export tests bench reliability
	.venv/bin/mypy
