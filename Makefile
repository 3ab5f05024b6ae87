# The two commands of the README: `make demo` (the main job) and `make test` (the whole suite).
.PHONY: setup demo test bench

setup:
	bash scripts/setup.sh

# a second `make demo` starts in seconds: setup.sh runs again only when it or pyproject.toml changed (its checks
# import torch several times); the atlases and the gallery are reused as they are
.venv/.setup-done: scripts/setup.sh pyproject.toml
	bash scripts/setup.sh
	touch $@

demo: .venv/.setup-done
	.venv/bin/convscope demo -o docs/gallery

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python -m bench
