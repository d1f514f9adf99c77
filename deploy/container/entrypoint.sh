#!/bin/sh
# The image's entry point (under tini): `coordinator|node-agent|gateway ARGS…` runs that program; anything else
# runs as given (a shell, node). Secrets may come as files, as compose and Kubernetes mount them: VAR_FILE=PATH sets
# VAR to the file's content (trailing newline dropped) for MESHTRAIN_TOKEN, MESHTRAIN_GATEWAY_API_KEY and
# MESHTRAIN_GATEWAY_ADMIN_KEY, which the programs read themselves; a value set directly wins over its file.
set -eu

load_secret() { # NAME: NAME_FILE's content into NAME unless NAME is set already
  eval "file=\${$1_FILE:-}; value=\${$1:-}"
  if [ -n "$file" ] && [ -z "$value" ]; then
    [ -r "$file" ] || { echo "entrypoint: $1_FILE=$file is not readable" >&2; exit 2; }
    value=$(cat "$file")
    export "$1=$value"
  fi
  unset "$1_FILE"
}
load_secret MESHTRAIN_TOKEN
load_secret MESHTRAIN_GATEWAY_API_KEY
load_secret MESHTRAIN_GATEWAY_ADMIN_KEY

case "${1:-}" in
  coordinator|node-agent|gateway) program=$1; shift; exec node "/app/bin/$program.js" "$@" ;;
  *) exec "$@" ;;
esac
