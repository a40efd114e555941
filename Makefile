# Everything runs inside the environment made by tools/setup_env.sh (.venv + .build/install).
# test-jazzy: the same on ROS 2 Jazzy's wheels (.venv-jazzy + .build-jazzy/install), ROS tests only.
.PHONY: setup test lint format demo setup-jazzy test-jazzy

# The test files that use rclpy (a ROS context, DDS, node processes): what differs between distros.
ROS_TESTS = $(shell grep -lE 'ros_context|^\s*(from|import) rclpy\b' test/test_*.py)

setup:
	@tools/setup_env.sh

test: setup
	tools/in_env.sh python -m pytest

setup-jazzy:
	@OVSEG_ROS_DISTRO=jazzy tools/setup_env.sh

test-jazzy: setup-jazzy
	OVSEG_ROS_DISTRO=jazzy tools/in_env.sh python -m pytest $(ROS_TESTS)

lint: setup
	tools/in_env.sh ruff check .
	tools/in_env.sh ruff format --check .

format: setup
	tools/in_env.sh ruff format .
	tools/in_env.sh ruff check --fix .

demo: setup
	tools/in_env.sh python -m ovseg_ros.demo $(ARGS)
