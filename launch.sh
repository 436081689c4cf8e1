#!/usr/bin/env bash
# Atelier launcher for Linux and macOS (launch.bat mirrors it step for step on Windows).
#
#   ./launch.sh [app flags]        set up .venv when needed, then run app.py with the flags
#   ./launch.sh --exit             set up only
#   ./launch.sh --test [pytest args]   set up (plus test requirements), then run the test suite
#   ./launch.sh --help             launcher flags, then app.py's flags
#
# Environment: ATELIER_PYTHON (interpreter used to create .venv), TORCH_COMMAND (replaces the torch and torchvision
# install, as in A1111: "pip install torch==... torchvision==... --index-url ..."), ATELIER_TORCH_CUDA (CUDA wheel
# tag, default below).
set -u

# The one place where torch and torchvision are pinned, as a pair (launch.bat reads the same lines; a test checks
# both agree). spandrel (upscaler models) imports torchvision, and a torchvision built for another torch does not
# import ("operator torchvision::nms does not exist"), so every path below installs both together.
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
TORCH_CUDA_DEFAULT=cu128
TORCH_INDEX=https://download.pytorch.org/whl

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
VENV_PY="$VENV/bin/python"
STAMP="$VENV/atelier-stamp"
CONSTRAINTS="$VENV/atelier-constraints.txt"
LOG="$VENV/atelier-install.log"

say() { echo "Atelier: $*"; }
fail() { echo "Atelier: ERROR: $*" >&2; exit 1; }

usage() {
    cat <<'EOF'
Usage: ./launch.sh [launcher flags] [app flags]

Launcher flags:
  --exit            set up .venv (Python, torch, requirements) and exit without starting the server
  --test [ARGS]     set up, install test requirements, run the test suite; ARGS go to pytest
  --test --long     also run the slow suites (long fuzz, soak) that CI skips
  -h, --help        show this help and app.py's flags

Environment:
  ATELIER_PYTHON    Python 3.10-3.12 used to create .venv (default: 3.11 when present)
  TORCH_COMMAND     replaces the torch install, e.g. "pip install torch==2.14.1 torchvision==0.29.1 --index-url URL"
  ATELIER_TORCH_CUDA  CUDA build of torch on NVIDIA machines (default cu128)

All other flags go to app.py:
EOF
}

# --- arguments ---------------------------------------------------------------------------------------------
MODE=run
ARGS=()
for arg in "$@"; do
    case "$MODE:$arg" in
        run:--test) MODE=test ;;
        run:--exit) MODE=exit ;;
        run:-h | run:--help) MODE=help ;;
        *) ARGS+=("$arg") ;;
    esac
done

# --- python ------------------------------------------------------------------------------------------------
python_ok() {  # prints the interpreter's version when it is a usable 3.10-3.12, fails otherwise
    "$1" -c 'import sys, venv; v = sys.version_info[:2]; assert (3, 10) <= v <= (3, 12); print("%d.%d" % v)' 2>/dev/null
}

find_python() {
    if [ -n "${ATELIER_PYTHON:-}" ]; then
        python_ok "$ATELIER_PYTHON" >/dev/null \
            || fail "ATELIER_PYTHON=$ATELIER_PYTHON is not a Python 3.10-3.12 with venv: point it at one, or unset it."
        echo "$ATELIER_PYTHON"
        return
    fi
    local cand
    for cand in python3.11 python3.12 python3.10 python3 python; do
        if command -v "$cand" >/dev/null 2>&1 && python_ok "$cand" >/dev/null; then
            command -v "$cand"
            return
        fi
    done
    fail "no Python 3.10-3.12 found: install Python 3.11 (python.org, or 'sudo apt install python3.11 python3.11-venv', or 'brew install python@3.11'), or set ATELIER_PYTHON=/path/to/python."
}

if [ "$MODE" = help ]; then
    usage
    if [ -x "$VENV_PY" ]; then HELP_PY="$VENV_PY"; else HELP_PY="$(find_python)" || exit 1; fi
    exec "$HELP_PY" "$ROOT/app.py" --help
fi

cd "$ROOT" || fail "cannot enter $ROOT."

if [ -x "$VENV_PY" ] && ! python_ok "$VENV_PY" >/dev/null; then
    say ".venv does not work (its Python moved or changed version): recreating it."
    rm -rf "$VENV"
fi
if [ ! -x "$VENV_PY" ]; then
    PY="$(find_python)" || exit 1
    say "creating .venv with $PY (Python $(python_ok "$PY"))"
    "$PY" -m venv "$VENV" \
        || fail "could not create .venv: install the venv module (Debian/Ubuntu: sudo apt install python3.11-venv) and check free disk space."
fi

# --- installs ----------------------------------------------------------------------------------------------
file_hash() {
    "$VENV_PY" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()[:16])' "$1"
}
stamped() { [ -f "$STAMP" ] && grep -qxF "$1" "$STAMP"; }
stamp() {  # replace the line of the same key, so a stamp holds one line per step
    local key="${1%%=*}"
    { [ -f "$STAMP" ] && grep -v "^$key=" "$STAMP"; echo "$1"; } >"$STAMP.new" && mv "$STAMP.new" "$STAMP"
}

pip_run() {  # pip_run WHAT ARGS...: pip with its noise filtered; stops with one line on failure
    local what="$1"
    shift
    "$VENV_PY" -m pip "$@" 2>&1 | tee -a "$LOG" | grep -v -e "is ignored" -e '^[[:space:]]*$' -e "^Looking in"
    local rc="${PIPESTATUS[0]}"
    [ "$rc" -eq 0 ] && return 0
    if tail -n 30 "$LOG" | grep -q "No space left on device"; then
        fail "installing $what ran out of disk space: free some space (a first install needs about 6 GB) and run the same command again."
    fi
    fail "installing $what failed (pip exit $rc; log: .venv/atelier-install.log): check your internet connection and run the same command again."
}

choose_torch() {  # sets TORCH_CMD and TORCH_FALLBACK (pip arguments; the fallback may be empty), TORCH_NOTE
    TORCH_FALLBACK=""
    if [ -n "${TORCH_COMMAND:-}" ]; then
        TORCH_NOTE="TORCH_COMMAND is set: $TORCH_COMMAND"
        TORCH_CMD="${TORCH_COMMAND#python -m }"
        TORCH_CMD="${TORCH_CMD#pip }"
        return
    fi
    local gpu cuda="${ATELIER_TORCH_CUDA:-$TORCH_CUDA_DEFAULT}"
    local pair="torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
    if gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)" && [ -n "$gpu" ]; then
        TORCH_NOTE="detected NVIDIA GPU ($gpu): installing torch $TORCH_VERSION + torchvision $TORCHVISION_VERSION, CUDA build $cuda"
        TORCH_CMD="install $pair --extra-index-url $TORCH_INDEX/$cuda"
    elif [ "$(uname -s)" = Darwin ] && [ "$(uname -m)" = arm64 ]; then
        TORCH_NOTE="detected Apple silicon: installing torch $TORCH_VERSION + torchvision $TORCHVISION_VERSION (default wheels, MPS)"
        TORCH_CMD="install $pair"
    else
        TORCH_NOTE="no GPU detected: installing torch $TORCH_VERSION + torchvision $TORCHVISION_VERSION, CPU build (images will be slow)"
        TORCH_CMD="install $pair --index-url $TORCH_INDEX/cpu --timeout 15 --retries 1"
        # The default index's wheels of this pair are CUDA builds that also run on a CPU (larger download).
        TORCH_FALLBACK="install $pair"
    fi
}

install_torch() {
    choose_torch
    if stamped "torch=$TORCH_CMD"; then return; fi
    say "$TORCH_NOTE"
    # shellcheck disable=SC2086  # the commands are lists of pip arguments
    if [ -z "$TORCH_FALLBACK" ]; then
        pip_run torch $TORCH_CMD
    elif ! "$VENV_PY" -m pip $TORCH_CMD >>"$LOG" 2>&1; then
        say "PyTorch's CPU index cannot be reached: installing torch $TORCH_VERSION + torchvision $TORCHVISION_VERSION from the default index"
        pip_run torch $TORCH_FALLBACK
    fi
    local version vision
    # The distributions' versions, not torch.__version__: that carries a build tag (2.14.1+cu130) the registry's
    # wheel does not, and a constraint with it matches nothing.
    version="$("$VENV_PY" -c 'import importlib.metadata as m, torch; print(m.version(torch.__name__))' 2>>"$LOG")" \
        || fail "torch was installed but does not import (log: .venv/atelier-install.log): remove .venv and run again."
    say "torch $version ready"
    # Later installs must never swap this torch (or its torchvision) for another build (PyPI's Linux wheel is a
    # multi-GB CUDA one). A TORCH_COMMAND without torchvision leaves it to requirements.txt (spandrel needs it).
    echo "torch==$version" >"$CONSTRAINTS"
    if vision="$("$VENV_PY" -c 'import importlib.metadata as m, torchvision; print(m.version(torchvision.__name__))' \
            2>>"$LOG")"; then
        echo "torchvision==$vision" >>"$CONSTRAINTS"
    fi
    stamp "torch=$TORCH_CMD"
    INSTALLED=1
}

install_requirements() {  # install_requirements KEY FILE
    local line
    line="$1=$(file_hash "$ROOT/$2")"
    if stamped "$line"; then return; fi
    say "installing $2"
    pip_run "$2" install -q -r "$ROOT/$2" -c "$CONSTRAINTS"
    stamp "$line"
    INSTALLED=1
}

check_upscalers() {  # after an install: spandrel (upscaler models) imports only beside a torchvision matching torch
    if [ "$INSTALLED" = 1 ] && ! "$VENV_PY" -c 'import spandrel' >>"$LOG" 2>&1; then
        say "WARNING: spandrel does not import (log: .venv/atelier-install.log): ESRGAN-family upscaler models will not load. torch and torchvision must be a matching pair: remove .venv and run again, or set TORCH_COMMAND to install both."
    fi
}

install_xformers() {  # optional, NVIDIA only, and only a prebuilt wheel that fits the installed torch
    if stamped "xformers=done"; then return; fi
    if nvidia-smi >/dev/null 2>&1 && [ -z "${TORCH_COMMAND:-}" ]; then
        if "$VENV_PY" -m pip install -q --only-binary :all: xformers -c "$CONSTRAINTS" >>"$LOG" 2>&1; then
            say "xformers installed (use it with --xformers)"
        else
            say "no xformers wheel fits this torch: going on without it (it is optional)"
        fi
    fi
    stamp "xformers=done"
}

echo "--- $(date) ./launch.sh $*" >>"$LOG" 2>/dev/null || fail "cannot write to .venv: check free disk space and permissions."
INSTALLED=0
install_torch
install_requirements requirements requirements.txt
check_upscalers
install_xformers

case "$MODE" in
    exit)
        say "set-up done (.venv ready); start with ./launch.sh"
        exit 0
        ;;
    test)
        install_requirements test-requirements requirements-test.txt
        install_requirements pool-requirements requirements-pool.txt  # the pool's tests run a local Ray cluster
        export HF_HUB_OFFLINE=1
        say "running the tests: python -m pytest${ARGS[*]:+ ${ARGS[*]}}"
        exec "$VENV_PY" -m pytest ${ARGS[@]+"${ARGS[@]}"}
        ;;
    *)
        for arg in ${ARGS[@]+"${ARGS[@]}"}; do
            case "$arg" in --pool | --pool=*) install_requirements pool-requirements requirements-pool.txt ;; esac
        done
        exec "$VENV_PY" "$ROOT/app.py" ${ARGS[@]+"${ARGS[@]}"}
        ;;
esac
