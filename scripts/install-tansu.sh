#!/usr/bin/env bash
# Installs the Kafka-compatible broker tansu into $CACHE (idempotent; ~12 min the first time).
source "$(dirname "$0")/common.sh"
if [ -x "$TANSU_BIN" ]; then log "tansu $TANSU_VERSION already installed at $TANSU_BIN"; exit 0; fi
log "building tansu $TANSU_VERSION (once; about 12 minutes on 2 cores)"
# --locked: without it the build breaks on dependency drift (see shared/NOTES.md).
cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql --root "$TANSU_ROOT"
[ -x "$TANSU_BIN" ] || die "tansu build finished but $TANSU_BIN is missing"
