#!/usr/bin/env bash
# Makes a local certificate authority and a certificate for the default configuration,
# so configs/gateway.toml can serve HTTPS on 127.0.0.1:8443:
#
#   cert/dev-ca.pem, cert/dev-ca.key  the CA; clients trust it with, for example,
#                                     curl --cacert cert/dev-ca.pem
#   cert/dev.pem, cert/dev.key        for localhost, demo.test, *.demo.test, 127.0.0.1
#                                     and ::1, valid for 90 days
#
#   scripts/dev-cert.sh          keep existing files, make missing ones
#   scripts/dev-cert.sh --force  make new ones
#
# Needs the openssl command. cert/ is git-ignored, so no key is ever committed.
set -euo pipefail
cd "$(dirname "$0")/.."

force=false
[ "${1:-}" = "--force" ] && force=true

if ! $force && [ -e cert/dev.pem ] && [ -e cert/dev.key ]; then
  echo "dev-cert: cert/dev.pem and cert/dev.key exist; pass --force to replace them"
  exit 0
fi
if ! command -v openssl >/dev/null 2>&1; then
  echo "dev-cert: the openssl command is required; install it (Debian: apt-get install openssl)" >&2
  exit 1
fi

mkdir -p cert
umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout cert/dev-ca.key -out cert/dev-ca.pem -days 825 \
  -subj "/CN=minigateway development CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout cert/dev.key -out "$work/dev.csr" -subj "/CN=localhost" 2>/dev/null
cat >"$work/extensions.cnf" <<'END'
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, DNS:demo.test, DNS:*.demo.test, IP:127.0.0.1, IP:::1
END
openssl x509 -req -in "$work/dev.csr" -CA cert/dev-ca.pem -CAkey cert/dev-ca.key \
  -set_serial "0x$(openssl rand -hex 8)" -days 90 \
  -extfile "$work/extensions.cnf" -out cert/dev.pem 2>/dev/null
chmod 644 cert/dev.pem cert/dev-ca.pem

expires=$(openssl x509 -in cert/dev.pem -noout -enddate | cut -d= -f2)
echo "dev-cert: wrote cert/dev.pem and cert/dev.key, issued by cert/dev-ca.pem, valid until $expires"
