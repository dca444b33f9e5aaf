# Makes a throwaway PKI for the demo, tests and benchmarks. Nothing it makes is committed.
# Usage: source scripts/lib/pki.sh; make_pki DIR
#   DIR/ca.pem, ca.key                  test CA for servers and clients
#   DIR/server.pem, server.key          api.mygreatbank.test, status.example.com, *.mygreatbank.test, *.loopback.test, localhost, 127.0.0.1
#   DIR/fusion-us.pem/.key, fusion-eu.pem/.key   client certificates (CN=fusion-us, CN=fusion-eu), issued by ca
#   DIR/rogue-ca.pem, rogue.pem/.key    a CA the proxy does not trust, and a client certificate and server cert from it
#   DIR/other-host.pem/.key             a server certificate for other.example.net (hostname mismatch)

pki_cert() { # NAME CN ISSUER [SAN] [EXT]
    local dir=$1 name=$2 cn=$3 issuer=$4 san=${5:-} ext=${6:-clientAuth}
    openssl ecparam -name prime256v1 -genkey -noout -out "$dir/$name.ec" 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in "$dir/$name.ec" -out "$dir/$name.key"
    rm -f "$dir/$name.ec"
    openssl req -new -key "$dir/$name.key" -subj "/O=mtls-proxy test/CN=$cn" -out "$dir/$name.csr" 2>/dev/null
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=digitalSignature"
        echo "extendedKeyUsage=$ext"
        [ -n "$san" ] && echo "subjectAltName=$san"
    } > "$dir/$name.ext"
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/$issuer.pem" -CAkey "$dir/$issuer.key" -CAcreateserial \
        -days 365 -sha256 -extfile "$dir/$name.ext" -out "$dir/$name.pem" 2>/dev/null
    rm -f "$dir/$name.csr" "$dir/$name.ext"
    chmod 600 "$dir/$name.key"
}

pki_ca() { # NAME CN
    local dir=$1 name=$2 cn=$3
    openssl ecparam -name prime256v1 -genkey -noout -out "$dir/$name.key" 2>/dev/null
    openssl req -x509 -new -key "$dir/$name.key" -subj "/O=mtls-proxy test/CN=$cn" -days 365 -sha256 \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$dir/$name.pem" 2>/dev/null
    chmod 600 "$dir/$name.key"
}

make_pki() {
    local dir=$1
    mkdir -p "$dir"
    pki_ca "$dir" ca "mtls-proxy test CA"
    pki_ca "$dir" rogue-ca "untrusted test CA"
    pki_cert "$dir" server "api.mygreatbank.test" ca \
        "DNS:api.mygreatbank.test,DNS:status.example.com,DNS:*.mygreatbank.test,DNS:*.loopback.test,DNS:localhost,IP:127.0.0.1" serverAuth
    pki_cert "$dir" fusion-us "fusion-us" ca "" clientAuth
    pki_cert "$dir" fusion-eu "fusion-eu" ca "" clientAuth
    pki_cert "$dir" rogue "rogue-client" rogue-ca "" clientAuth
    pki_cert "$dir" rogue-server "api.mygreatbank.test" rogue-ca "DNS:api.mygreatbank.test,DNS:untrusted.mygreatbank.test" serverAuth
    pki_cert "$dir" other-host "other.example.net" ca "DNS:other.example.net" serverAuth
}

# A client certificate with chosen validity dates, issued by DIR/ca (openssl ca, since `openssl x509` in
# OpenSSL 3.0 cannot set notBefore). START and END are UTC times as YYYYMMDDHHMMSSZ.
# Usage: pki_cert_dated DIR NAME CN START END [server]   (server: a server certificate for CN)
pki_cert_dated() {
    local dir=$1 name=$2 cn=$3 start=$4 end=$5 kind=${6:-client}
    local db="$dir/.ca-db"
    mkdir -p "$db/new"
    [ -f "$db/index.txt" ] || : > "$db/index.txt"
    [ -f "$db/serial" ] || openssl rand -hex 16 > "$db/serial"
    cat > "$db/ca.cnf" <<CNF
[ca]
default_ca = test
[test]
database = $db/index.txt
new_certs_dir = $db/new
certificate = $dir/ca.pem
private_key = $dir/ca.key
serial = $db/serial
default_md = sha256
policy = anything
unique_subject = no
email_in_dn = no
[anything]
O = optional
CN = supplied
[client]
basicConstraints = CA:FALSE
keyUsage = digitalSignature
extendedKeyUsage = clientAuth
[server]
basicConstraints = CA:FALSE
keyUsage = digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:$cn
CNF
    openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out "$dir/$name.key"
    chmod 600 "$dir/$name.key"
    openssl req -new -key "$dir/$name.key" -subj "/O=mtls-proxy test/CN=$cn" -out "$dir/$name.csr" 2>/dev/null
    openssl ca -batch -config "$db/ca.cnf" -extensions "$kind" -notext -startdate "$start" -enddate "$end" \
        -in "$dir/$name.csr" -out "$dir/$name.pem" 2>/dev/null
    rm -f "$dir/$name.csr"
}

# UTC time N seconds from now (negative for the past), as openssl ca wants it.
utc_in() { date -u -d "@$(( $(date +%s) + $1 ))" +%Y%m%d%H%M%SZ; }
