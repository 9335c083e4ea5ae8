#!/usr/bin/env bash
# Makes the demo certificates that conf/tls.toml uses, with the openssl command line tool:
#
#   ca.crt / ca.key                    a test certificate authority that signs all the others
#   default.crt / default.key          the TLS listener's own certificate: localhost, 127.0.0.1
#   api.example.com.crt / .key         a second listener certificate, chosen by SNI
#   backend.crt / backend.key          a backend's certificate: backend.internal, localhost
#   client.crt / client.key            the gateway's client certificate for mTLS to backends
#
# FOR TESTING ONLY: the keys are not secret (they are committed to the repository).
#
#   conf/make-certs.sh            writes into conf/certs/
#   conf/make-certs.sh DIR        writes into DIR
#   DAYS=30 conf/make-certs.sh    certificates valid for 30 days (default 3650)
set -euo pipefail

out="${1:-$(cd "$(dirname "$0")" && pwd)/certs}"
days="${DAYS:-3650}"
mkdir -p "$out"
cd "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# The test CA.
key ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=Switchyard Test CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.crt

# issue NAME CN SAN EKU: NAME.key and NAME.crt signed by the test CA.
issue() {
  local name="$1" cn="$2" san="$3" eku="$4"
  key "$name.key"
  openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$tmp/$name.csr"
  cat >"$tmp/$name.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=$eku
subjectAltName=$san
EOF
  openssl x509 -req -in "$tmp/$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -CAserial "$tmp/ca.srl" -sha256 -days "$days" -extfile "$tmp/$name.ext" -out "$name.crt" 2>/dev/null
}

issue default localhost "DNS:localhost,IP:127.0.0.1,IP:::1" serverAuth
issue api.example.com api.example.com "DNS:api.example.com" serverAuth
issue backend backend.internal "DNS:backend.internal,DNS:localhost" serverAuth
issue client switchyard-gateway "DNS:switchyard-gateway" clientAuth

chmod 644 ./*.crt
chmod 600 ./*.key
echo "test certificates written to $out (for testing only)"
