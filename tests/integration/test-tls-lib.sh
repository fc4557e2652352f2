# shellcheck shell=bash
# test-tls-lib.sh - certificates and keys for the TLS tests (sourced, not a
# test itself).  make_pki DIR makes, with GnuTLS's certtool and psktool:
#   DIR/server/       ca-cert.pem server-cert.pem server-key.pem  (QEMU's
#                     tls-creds-x509 layout; the server is localhost and
#                     127.0.0.1)
#   DIR/client/       ca-cert.pem client-cert.pem client-key.pem
#   DIR/client-nocert/ ca-cert.pem only
#   DIR/client-other/ ca-cert.pem, and a client certificate from another CA
#   DIR/server-crl/   as DIR/server, plus ca-crl.pem revoking the client
#                     certificate and dh-params.pem
#   DIR/psk/keys.psk  user alice; DIR/psk-wrong/keys.psk  alice, another key

make_pki() {
    local d=$1
    mkdir -p "$d"/{server,server-crl,client,client-nocert,client-other,psk,psk-wrong} || return 1
    (
        set -e
        cd "$d"
        cat >ca.info <<EOF
cn = nbdstack test CA
ca
cert_signing_key
expiration_days = 2
EOF
        cat >other-ca.info <<EOF
cn = some other CA
ca
cert_signing_key
expiration_days = 2
EOF
        cat >server.info <<EOF
organization = nbdstack test
cn = localhost
dns_name = localhost
ip_address = 127.0.0.1
tls_www_server
encryption_key
signing_key
expiration_days = 2
EOF
        cat >client.info <<EOF
organization = nbdstack test
cn = client
tls_www_client
encryption_key
signing_key
expiration_days = 2
EOF
        q() { certtool "$@" >/dev/null 2>&1; }
        q --generate-privkey --key-type=ecdsa --outfile ca-key.pem
        q --generate-self-signed --load-privkey ca-key.pem --template ca.info \
            --outfile ca-cert.pem
        q --generate-privkey --key-type=ecdsa --outfile other-ca-key.pem
        q --generate-self-signed --load-privkey other-ca-key.pem \
            --template other-ca.info --outfile other-ca-cert.pem
        q --generate-privkey --key-type=ecdsa --outfile server/server-key.pem
        q --generate-certificate --load-ca-certificate ca-cert.pem \
            --load-ca-privkey ca-key.pem --load-privkey server/server-key.pem \
            --template server.info --outfile server/server-cert.pem
        q --generate-privkey --key-type=ecdsa --outfile client/client-key.pem
        q --generate-certificate --load-ca-certificate ca-cert.pem \
            --load-ca-privkey ca-key.pem --load-privkey client/client-key.pem \
            --template client.info --outfile client/client-cert.pem
        q --generate-privkey --key-type=ecdsa --outfile client-other/client-key.pem
        q --generate-certificate --load-ca-certificate other-ca-cert.pem \
            --load-ca-privkey other-ca-key.pem \
            --load-privkey client-other/client-key.pem \
            --template client.info --outfile client-other/client-cert.pem
        for c in server client client-nocert client-other; do
            cp ca-cert.pem "$c/"
        done
        cp server/* server-crl/
        echo "crl_next_update = 2" >crl.info
        q --generate-crl --load-ca-privkey ca-key.pem --load-ca-certificate ca-cert.pem \
            --load-certificate client/client-cert.pem --template crl.info \
            --outfile server-crl/ca-crl.pem
        certtool --get-dh-params --sec-param medium >server-crl/dh-params.pem 2>/dev/null
        psktool -u alice -p psk/keys.psk >/dev/null
        psktool -u alice -p psk-wrong/keys.psk >/dev/null
    )
}
