#!/usr/bin/env bash
# Install Stoplight Prism (the OpenAPI contract proxy used by the do-sim
# conformance tests) into a cache directory outside the repository.
#
# Idempotent: does nothing when the pinned version is already installed.
# Prints the path of the prism executable on stdout (last line).
#
#   PRISM_VERSION   pinned version (default below)
#   PRISM_HOME      install dir (default ~/.cache/image-builder/prism)
#
# Needs node >= 18 and npm (Debian: `apt-get install nodejs npm`).
set -euo pipefail

PRISM_VERSION="${PRISM_VERSION:-5.16.0}"
PRISM_HOME="${PRISM_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/image-builder/prism}"
bin="$PRISM_HOME/node_modules/.bin/prism"
stamp="$PRISM_HOME/.installed-version"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "setup-prism: node and npm are required (Debian: apt-get install nodejs npm)" >&2
    exit 1
fi

if [[ -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$PRISM_VERSION" ]]; then
    echo "setup-prism: @stoplight/prism-cli $PRISM_VERSION already in $PRISM_HOME" >&2
    echo "$bin"
    exit 0
fi

mkdir -p "$PRISM_HOME"
cd "$PRISM_HOME"
[[ -f package.json ]] || echo '{"name":"image-builder-prism","private":true}' > package.json
echo "setup-prism: installing @stoplight/prism-cli@$PRISM_VERSION into $PRISM_HOME" >&2
npm install --no-audit --no-fund --loglevel=error --save-exact "@stoplight/prism-cli@$PRISM_VERSION" >&2
"$bin" --version >&2
echo "$PRISM_VERSION" > "$stamp"
echo "$bin"
