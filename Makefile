# The two commands of the README. Each sets up what it needs on a fresh machine.
.PHONY: demo test bootstrap lint bench bench-stream

bootstrap:
	@bash infra/bootstrap.sh

demo: bootstrap
	.venv/bin/tapeflow demo

test: bootstrap
	.venv/bin/tapeflow up
	.venv/bin/ruff check .
	.venv/bin/pytest -q

lint: bootstrap
	.venv/bin/ruff check .

bench: bootstrap
	.venv/bin/tapeflow up
	.venv/bin/python -m bench.pipeline

bench-stream: bootstrap
	.venv/bin/tapeflow up
	.venv/bin/python -m bench.stream
