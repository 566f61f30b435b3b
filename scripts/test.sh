#!/usr/bin/env bash
# The test suite, with everything it needs: .venv, OpenGL for MetaWorld's renderer (installed
# when run as root, else named), and openpi's robot client in its own .venv-robot (it pins
# numpy<2, so it lives apart, as on a robot). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh

GL_PACKAGES="libegl1 libegl-mesa0 libgl1-mesa-dri"
if ! ldconfig -p | grep -q libEGL_mesa.so.0; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq $GL_PACKAGES
    else
        echo "error: MetaWorld's tests need OpenGL through EGL: sudo apt-get install $GL_PACKAGES" >&2
        exit 2
    fi
fi
export MUJOCO_GL=egl

if [ ! -x .venv-robot/bin/python ] || ! .venv-robot/bin/python -c "import openpi_client" 2>/dev/null; then
    python3 -m venv .venv-robot
    .venv-robot/bin/pip install --quiet openpi-client==0.1.2 typing_extensions==4.16.0
fi

python -m pytest tests "$@"
