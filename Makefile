# Everything runs inside the environment made by tools/setup_env.sh (.venv + .build/install).
.PHONY: setup test lint format demo

setup:
	@tools/setup_env.sh

test: setup
	tools/in_env.sh python -m pytest

lint: setup
	tools/in_env.sh ruff check .
	tools/in_env.sh ruff format --check .

format: setup
	tools/in_env.sh ruff format .
	tools/in_env.sh ruff check --fix .

demo: setup
	tools/in_env.sh python -m ovseg_ros.demo $(ARGS)
