# Sourced by scripts/demo.sh and scripts/test.sh: the project's own environment in .venv, created
# when absent or when pyproject.toml changed since it was made, then activated. torch comes first,
# pinned (2.13.0 is the CPU build here; an unpinned torch pulls several GB of CUDA packages).
VENV=.venv
STAMP="$VENV/.installed-from"
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "setting up $VENV (torch, vla and its test and MetaWorld extras; a few minutes, once)"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet torch==2.13.0
    "$VENV/bin/python" -m pip install --quiet -e ".[dev,metaworld]"
    echo "$WANT" > "$STAMP"
fi
source "$VENV/bin/activate"
