#!/usr/bin/env bash
# Runs a command inside the environment made by tools/setup_env.sh: the venv, this checkout's
# Python sources first on the path, and the messages built into .build/install.
#   tools/in_env.sh python -m pytest
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
install="$root/.build/install"
[ -f "$install/local_setup.sh" ] || { echo "run tools/setup_env.sh first" >&2; exit 1; }

if [ -z "${ROS_DISTRO:-}" ]; then
  export AMENT_PREFIX_PATH="$venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
fi
# colcon's setup script adds the package's prefix, libraries and Python path.
set +u
# shellcheck disable=SC1091
COLCON_CURRENT_PREFIX="$install" . "$install/local_setup.sh"
set -u
export PATH="$venv/bin:$PATH"
# The sources of this checkout come before the installed copy; ovseg_ros.msg still resolves to
# the generated module (ovseg_ros/__init__.py extends the package path).
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$@"
