#!/usr/bin/env bash
# Creates a throw-away CA and a localhost server certificate in $DEV/certs (idempotent).
# Used by the scratch PostgreSQL servers (upstream TLS) and by hindsight's client-side TLS.
source "$(dirname "$0")/common.sh"
dir="$DEV/certs"
[ -f "$dir/server.key" ] && exit 0
mkdir -p "$dir"; cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=hindsight-dev-ca" \
  -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > ext.cnf
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
  -extfile ext.cnf -out server.crt 2>/dev/null
chmod 644 ./*.crt; chmod 600 ./*.key
log "certificates in $dir"
