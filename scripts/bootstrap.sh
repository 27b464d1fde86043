#!/usr/bin/env bash
# Set up a fresh machine: system peers (for tests), .venv, pinned CPU torch, the project.
# Usage: scripts/bootstrap.sh [run|test]   (run: Python only; test: also dcmtk, Orthanc, dicom3tools,
#   PostgreSQL, HAProxy)
# Why pinned torch first: an unpinned torch pulls a multi-GB CUDA build; 2.13.0 CPU satisfies torch>=2.2.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
PY="${PYTHON:-python3}"

need_apt=()
if [ "$mode" = test ]; then
  command -v storescu >/dev/null || need_apt+=(dcmtk)
  command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ] || need_apt+=(orthanc)
  [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)  # STOW-RS/WADO-RS peer
  command -v dciodvfy >/dev/null || need_apt+=(dicom3tools)
  [ -d /usr/share/mricron/templates ] || need_apt+=(mricron-data)
  # real images of the enhancer corpus, read where Debian installs them (enhancers/corpus.py)
  [ -f /usr/share/doc/invesalius-examples/examples/Cranium.inv3 ] || need_apt+=(invesalius-examples)
  [ -d /usr/share/doc/insighttoolkit5-examples/examples/Data ] || need_apt+=(insighttoolkit5-examples)
  [ -d /usr/lib/python3/dist-packages/heudiconv/tests/data ] || need_apt+=(heudiconv)
  # scale-out tests: a real PostgreSQL (tests/servers.py runs its own cluster) and HAProxy in front of receivers
  compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need_apt+=(postgresql)
  command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
  command -v chromium >/dev/null || need_apt+=(chromium)          # web console tests (headless)
  [ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "bootstrap: installing ${need_apt[*]} with apt-get" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # The Debian package starts a system Orthanc on 4242/8042; tests start their own on free ports.
  # Likewise the packages' own PostgreSQL cluster and HAProxy: tests run theirs on free ports.
  for service in orthanc postgresql haproxy; do ($SUDO service "$service" stop || true) >/dev/null 2>&1; done
fi

stamp=.venv/.installed-$mode
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q torch==2.13.0
  if [ "$mode" = test ]; then .venv/bin/pip install -q -e '.[test]'; else .venv/bin/pip install -q -e .; fi
  touch "$stamp"
fi
