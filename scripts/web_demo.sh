#!/usr/bin/env bash
# A web page for every generation task on http://127.0.0.1:7860 (web_demo.py; Gradio).
# Needs: python3 -m pip install -r requirements-web.txt
# Variables: CHECKPOINT_PATH CAPTION_CHECKPOINT_PATH SR_CHECKPOINT_PATH (else the scripts' chain:
# the released models under pretrained/cogview/, else the shipped demo models), NLAYERS NHIDDEN
# NATT MAXSEQLEN TEMP TOPK TOPP DEVICE; extra arguments are passed on (--port, --host, --queue-size,
# --concurrency, ...; python3 web_demo.py --help).
set -euo pipefail
main_dir=$(dirname "$(dirname "$(realpath "$0")")")
if [ "${MPSIZE:-1}" != 1 ]; then
  echo "error: MPSIZE=$MPSIZE: the web page runs each model in one process; unset MPSIZE (merge a split" \
       "checkpoint with python -m arch.change_mp SRC DST --model-parallel-size 1)" >&2
  exit 2
fi
if ! python3 -c "import importlib.util as u, sys; sys.exit(u.find_spec('gradio') is None)"; then
  echo "error: gradio is not installed: python3 -m pip install -r $main_dir/requirements-web.txt" >&2
  exit 1
fi
exec python3 "$main_dir/web_demo.py" "$@"
