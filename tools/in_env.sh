#!/usr/bin/env bash
# Runs a command inside the environment made by tools/setup_env.sh: the venv, this checkout's
# Python sources first on the path, and the messages built by colcon. OVSEG_ROS_DISTRO picks the
# environment as it does for setup_env.sh: kilted (default: .venv, .build/) or jazzy
# (.venv-jazzy, .build-jazzy/).
#   tools/in_env.sh python -m pytest
#   OVSEG_ROS_DISTRO=jazzy tools/in_env.sh python -m pytest test/test_messages.py
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
case "${OVSEG_ROS_DISTRO:-kilted}" in
  kilted) venv="$root/.venv" install="$root/.build/install" ;;
  jazzy) venv="$root/.venv-jazzy" install="$root/.build-jazzy/install" ;;
  *) echo "OVSEG_ROS_DISTRO must be kilted or jazzy" >&2; exit 1 ;;
esac
[ -f "$install/local_setup.sh" ] || { echo "run tools/setup_env.sh first" >&2; exit 1; }

if [ -z "${ROS_DISTRO:-}" ]; then
  export AMENT_PREFIX_PATH="$venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
fi
# colcon's setup script adds the package's prefix, libraries and Python path.
set +u
# shellcheck disable=SC1091
COLCON_CURRENT_PREFIX="$install" . "$install/local_setup.sh"
set -u
# The node programs (what `ros2 run ovseg_ros ovseg_segmenter` runs) come after the venv's.
export PATH="$venv/bin:$install/ovseg_ros/lib/ovseg_ros:$PATH"
# The sources of this checkout come before the installed copy; ovseg_ros.msg still resolves to
# the generated module (ovseg_ros/__init__.py extends the package path).
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$@"
