# shellcheck shell=bash
# Sourced by the scripts here: finds or installs BuildGrid's `bgd` CLI.
# Env: BGD_VENV (default /var/tmp/bgd-venv), BUILDGRID_VERSION (default
# 0.9.1, the version these scripts were checked with), BGD_PYTHON.
# buildgrid 0.9.x needs Python >= 3.12 (Debian 12 ships 3.11).
BGD_VENV=${BGD_VENV:-/var/tmp/bgd-venv}
BUILDGRID_VERSION=${BUILDGRID_VERSION:-0.9.1}

ensure_bgd() {  # sets BGD to the bgd executable, installing it when missing
  if [ -n "${BGD:-}" ] && [ -x "$BGD" ]; then return 0; fi
  BGD="$BGD_VENV/bin/bgd"
  [ -x "$BGD" ] && return 0
  local py=${BGD_PYTHON:-} c
  if [ -z "$py" ]; then
    for c in python3.13 python3.12 /root/.pyenv/versions/3.13*/bin/python3 \
             /root/.pyenv/versions/3.12*/bin/python3 python3; do
      if "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
        py=$c; break
      fi
    done
  fi
  [ -n "$py" ] || { echo "FAIL: buildgrid needs python >= 3.12 (set BGD_PYTHON)" >&2; return 1; }
  echo "installing buildgrid==$BUILDGRID_VERSION into $BGD_VENV with $py" >&2
  "$py" -m venv "$BGD_VENV" >&2 || return 1
  "$BGD_VENV/bin/pip" install -q --upgrade pip >&2 || return 1
  "$BGD_VENV/bin/pip" install -q "buildgrid==$BUILDGRID_VERSION" >&2 || return 1
  [ -x "$BGD" ]
}

# ENDPOINT (grpc://host:port, grpcs://host:port, http(s)://host:port or
# host:port) -> http(s)://host:port as `bgd --remote` wants it.
bgd_remote() {
  local e=$1
  case $e in
    grpcs://*|https://*) e=${e#grpcs://}; e=${e#https://}; echo "https://$e" ;;
    *) e=${e#grpc://}; e=${e#http://}; echo "http://$e" ;;
  esac
}

# Credentials from the environment as bgd flags, one per line, for
#   mapfile -t AUTH < <(bgd_auth_args [cas])
# BGD_AUTH_TOKEN: file holding a bearer token; BGD_SERVER_CERT: CA or server
# certificate (PEM); BGD_CLIENT_CERT / BGD_CLIENT_KEY: client certificate and
# key. With "cas", the flags `bgd execute` wants for its CAS client are added.
bgd_auth_args() {
  [ -n "${BGD_AUTH_TOKEN:-}" ] && printf '%s\n' --auth-token "$BGD_AUTH_TOKEN"
  [ -n "${BGD_SERVER_CERT:-}" ] && printf '%s\n' --server-cert "$BGD_SERVER_CERT"
  [ -n "${BGD_CLIENT_CERT:-}" ] && printf '%s\n' --client-cert "$BGD_CLIENT_CERT"
  [ -n "${BGD_CLIENT_KEY:-}" ] && printf '%s\n' --client-key "$BGD_CLIENT_KEY"
  if [ "${1:-}" = cas ]; then
    [ -n "${BGD_SERVER_CERT:-}" ] && printf '%s\n' --cas-server-cert "$BGD_SERVER_CERT"
    [ -n "${BGD_CLIENT_CERT:-}" ] && printf '%s\n' --cas-client-cert "$BGD_CLIENT_CERT"
    [ -n "${BGD_CLIENT_KEY:-}" ] && printf '%s\n' --cas-client-key "$BGD_CLIENT_KEY"
  fi
  return 0
}
