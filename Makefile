# The two commands of the README: `make demo` (the main job) and `make test` (the whole suite).
.PHONY: setup demo test bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/convscope demo -o docs/gallery

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python -m bench
