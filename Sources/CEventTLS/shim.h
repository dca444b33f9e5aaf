#ifndef MTLS_PROXY_CEVENTTLS_SHIM_H
#define MTLS_PROXY_CEVENTTLS_SHIM_H

/* A libc header first: event2/event-config.h defines _GNU_SOURCE, which would
   otherwise make this module see glibc differently from SwiftGlibc. */
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <stdio.h>
#include <sys/inotify.h>
#include <sys/eventfd.h>
#include <crypt.h>
#include <malloc.h>

#include <event2/event.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/listener.h>
#include <event2/dns.h>
#include <event2/util.h>
#include <event2/thread.h>
#include <event2/http.h>

#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/evp.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/engine.h>
#include <openssl/rsa.h>
#include <openssl/ec.h>
#include <openssl/ocsp.h>
#include <openssl/async.h>
#include <openssl/provider.h>
#include <openssl/store.h>

/* Wrappers for OpenSSL and libevent function-like macros, which Swift cannot import. */

static inline int mtls_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_min_proto_version(ctx, version);
}
static inline int mtls_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_max_proto_version(ctx, version);
}
static inline int mtls_SSL_CTX_set1_groups_list(SSL_CTX *ctx, const char *list) {
    return (int)SSL_CTX_set1_groups_list(ctx, list);
}
static inline int mtls_SSL_CTX_set1_sigalgs_list(SSL_CTX *ctx, const char *list) {
    return (int)SSL_CTX_set1_sigalgs_list(ctx, list);
}
static inline int mtls_sk_SSL_CIPHER_num(const STACK_OF(SSL_CIPHER) *sk) { return sk_SSL_CIPHER_num(sk); }
static inline const SSL_CIPHER *mtls_sk_SSL_CIPHER_value(const STACK_OF(SSL_CIPHER) *sk, int i) { return sk_SSL_CIPHER_value(sk, i); }
static inline int mtls_sk_X509_REVOKED_num(const STACK_OF(X509_REVOKED) *sk) { return sk_X509_REVOKED_num(sk); }
/* The SSL an X509_STORE_CTX verifies for (during a handshake), or NULL. */
static inline SSL *mtls_X509_STORE_CTX_get_ssl(X509_STORE_CTX *ctx) {
    return (SSL *)X509_STORE_CTX_get_ex_data(ctx, SSL_get_ex_data_X509_STORE_CTX_idx());
}
/* The DER SubjectPublicKeyInfo of a certificate, in a buffer the caller frees with OPENSSL_free; length or -1. */
static inline int mtls_X509_spki_der(X509 *x, unsigned char **out) {
    *out = NULL;
    return i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), out);
}
/* The index-th URI among the full names of a certificate's CRL distribution points, copied into buf (if not
   NULL) with a NUL; its length, or -1 when there is no such URI. */
static inline int mtls_X509_crl_dp_uri(X509 *x, int index, char *buf, int buflen) {
    STACK_OF(DIST_POINT) *dps = X509_get_ext_d2i(x, NID_crl_distribution_points, NULL, NULL);
    int found = -1, seen = 0;
    if (dps == NULL) return -1;
    for (int i = 0; i < sk_DIST_POINT_num(dps) && found < 0; i++) {
        DIST_POINT *dp = sk_DIST_POINT_value(dps, i);
        if (dp->distpoint == NULL || dp->distpoint->type != 0) continue;
        GENERAL_NAMES *names = dp->distpoint->name.fullname;
        for (int j = 0; j < sk_GENERAL_NAME_num(names); j++) {
            GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, j);
            if (gn->type != GEN_URI) continue;
            if (seen++ != index) continue;
            const unsigned char *data = ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
            int len = ASN1_STRING_length(gn->d.uniformResourceIdentifier);
            if (buf != NULL && buflen > len) { memcpy(buf, data, (size_t)len); buf[len] = 0; }
            found = len;
            break;
        }
    }
    CRL_DIST_POINTS_free(dps);
    return found;
}
static inline STACK_OF(X509_CRL) *mtls_sk_X509_CRL_new_null(void) { return sk_X509_CRL_new_null(); }
static inline int mtls_sk_X509_CRL_push(STACK_OF(X509_CRL) *sk, X509_CRL *crl) { return sk_X509_CRL_push(sk, crl); }
static inline void mtls_sk_X509_CRL_pop_free(STACK_OF(X509_CRL) *sk) { sk_X509_CRL_pop_free(sk, X509_CRL_free); }
/* From a certificate verification callback: suspend the handshake, to verify again when SSL_connect is called
   next (SSL_ERROR_WANT_RETRY_VERIFY until then). */
static inline int mtls_SSL_set_retry_verify(SSL *ssl) { return SSL_set_retry_verify(ssl) ? 1 : 0; }
/* OCSP stapling (client side). */
static inline long mtls_SSL_CTX_set_tlsext_status_cb(SSL_CTX *ctx, int (*cb)(SSL *, void *)) {
    return SSL_CTX_set_tlsext_status_cb(ctx, cb);
}
static inline long mtls_SSL_CTX_set_tlsext_status_arg(SSL_CTX *ctx, void *arg) {
    return SSL_CTX_set_tlsext_status_arg(ctx, arg);
}
static inline long mtls_SSL_set_tlsext_status_type_ocsp(SSL *ssl) {
    return SSL_set_tlsext_status_type(ssl, TLSEXT_STATUSTYPE_ocsp);
}
static inline long mtls_SSL_get_tlsext_status_ocsp_resp(SSL *ssl, const unsigned char **resp) {
    unsigned char *p = NULL;
    long len = SSL_get_tlsext_status_ocsp_resp(ssl, &p);
    *resp = p;
    return len;
}
static inline int mtls_SSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}
static inline long mtls_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_mode(ctx, mode);
}
static inline long mtls_SSL_MODE_RELEASE_BUFFERS(void) { return SSL_MODE_RELEASE_BUFFERS; }
/* The proxy's own TLS I/O over a socket: writes may complete partly, from an evbuffer that moves. */
static inline void mtls_SSL_set_direct_io_modes(SSL *ssl) {
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_set_read_ahead(ssl, 1);
    /* Room for several records per read(2) of a body; returned whenever empty (SSL_MODE_RELEASE_BUFFERS). */
    SSL_set_default_read_buffer_len(ssl, 64 * 1024);
}
static inline int mtls_SSL_CTX_add1_chain_cert(SSL_CTX *ctx, X509 *x509) {
    return (int)SSL_CTX_add1_chain_cert(ctx, x509);
}
static inline void mtls_SSL_CTX_set_default_options(SSL_CTX *ctx) {
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
}
/* A close without close_notify reads as the end of the stream (the caller checks the length it expected). */
static inline void mtls_SSL_CTX_ignore_unexpected_eof(SSL_CTX *ctx) {
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
}
static inline long mtls_SSL_CTX_set_session_cache_client(SSL_CTX *ctx) {
    return SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
}
static inline long mtls_BIO_get_mem_data(BIO *bio, char **data) {
    return BIO_get_mem_data(bio, data);
}
static inline void mtls_OPENSSL_free(void *ptr) { OPENSSL_free(ptr); }
static inline unsigned long mtls_XN_FLAG_RFC2253(void) { return XN_FLAG_RFC2253; }
static inline int mtls_sk_X509_num(const STACK_OF(X509) *sk) { return sk_X509_num(sk); }
static inline X509 *mtls_sk_X509_value(const STACK_OF(X509) *sk, int i) { return sk_X509_value(sk, i); }
static inline void mtls_sk_X509_pop_free(STACK_OF(X509) *sk) { sk_X509_pop_free(sk, X509_free); }

static inline int mtls_MBSTRING_ASC(void) { return MBSTRING_ASC; }
static inline long mtls_SSL_CTX_set_tlsext_servername_callback(SSL_CTX *ctx, int (*cb)(SSL *, int *, void *)) {
    return SSL_CTX_set_tlsext_servername_callback(ctx, cb);
}
static inline long mtls_SSL_CTX_set_tlsext_servername_arg(SSL_CTX *ctx, void *arg) {
    return SSL_CTX_set_tlsext_servername_arg(ctx, arg);
}
static inline int mtls_SSL_TLSEXT_ERR_OK(void) { return SSL_TLSEXT_ERR_OK; }
static inline int mtls_SSL_TLSEXT_ERR_ALERT_FATAL(void) { return SSL_TLSEXT_ERR_ALERT_FATAL; }
static inline int mtls_SSL_AD_UNRECOGNIZED_NAME(void) { return SSL_AD_UNRECOGNIZED_NAME; }
static inline int mtls_SSL_get_ex_new_index(void) { return SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL); }

/* libevent */
static inline struct event *mtls_evtimer_new(struct event_base *base, event_callback_fn cb, void *arg) {
    return event_new(base, -1, 0, cb, arg);
}
static inline int mtls_evtimer_add_ms(struct event *ev, long ms) {
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    return event_add(ev, &tv);
}
static inline struct event *mtls_evsignal_new(struct event_base *base, int sig, event_callback_fn cb, void *arg) {
    return event_new(base, sig, EV_SIGNAL | EV_PERSIST, cb, arg);
}
static inline void mtls_bufferevent_set_timeouts_ms(struct bufferevent *bev, long read_ms, long write_ms) {
    struct timeval r = { read_ms / 1000, (read_ms % 1000) * 1000 };
    struct timeval w = { write_ms / 1000, (write_ms % 1000) * 1000 };
    bufferevent_set_timeouts(bev, read_ms > 0 ? &r : NULL, write_ms > 0 ? &w : NULL);
}
static inline int mtls_errno(void) { return errno; }
static inline void mtls_set_errno(int e) { errno = e; }
static inline int mtls_event_add_ms(struct event *ev, long ms) {
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    return event_add(ev, ms > 0 ? &tv : NULL);
}
static inline long mtls_atomic_add(long *p, long v) { return __atomic_add_fetch(p, v, __ATOMIC_RELAXED); }
static inline long mtls_atomic_load(long *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

/* OpenSSL's ENGINE API (deprecated in 3.0, the only way to the libp11 pkcs11 engine on Debian 12's OpenSSL),
   wrapped so that its deprecation is said once, here. Used only for keys on PKCS#11 tokens. */
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wdeprecated-declarations"
static inline void *mtls_engine_by_id(const char *id) { return ENGINE_by_id(id); }
static inline int mtls_engine_ctrl_cmd_string(void *e, const char *name, const char *value) {
    return ENGINE_ctrl_cmd_string((ENGINE *)e, name, value, 0);
}
static inline int mtls_engine_init(void *e) { return ENGINE_init((ENGINE *)e); }
static inline int mtls_engine_free(void *e) { return ENGINE_free((ENGINE *)e); }
static inline EVP_PKEY *mtls_engine_load_private_key(void *e, const char *id) {
    return ENGINE_load_private_key((ENGINE *)e, id, NULL, NULL);
}
static inline int mtls_engine_finish(void *e) { return ENGINE_finish((ENGINE *)e); }
/* libp11's LOAD_CERT_CTRL: the certificate a pkcs11: URI names, a copy the caller owns (NULL if none). */
static inline X509 *mtls_engine_load_certificate(void *e, const char *id) {
    struct { const char *cert_id; X509 *cert; } params = { id, NULL };
    if (ENGINE_ctrl_cmd((ENGINE *)e, "LOAD_CERT_CTRL", 0, &params, NULL, 1) != 1) return NULL;
    return params.cert;
}
/* Drops the engine reference libp11 puts on each key it hands out (EVP_PKEY_set1_engine), so that the engine's
   last functional reference can be let go and the PKCS#11 module finalised (token keys' recovery). */
static inline int mtls_evp_pkey_drop_engine(EVP_PKEY *k) { return EVP_PKEY_set1_engine(k, NULL); }

/* Front keys for token keys: the token key's public half under RSA and EC_KEY methods whose private operations
   call back into the proxy (`TokenSigner`), which signs with the token key it currently holds, and re-opens it
   when the token comes back. The methods are made once; the signer is kept in the key's ex_data. */
typedef int (*mtls_rsa_priv_enc_fn)(int, const unsigned char *, unsigned char *, RSA *, int);
typedef int (*mtls_rsa_sign_fn)(int, const unsigned char *, unsigned int, unsigned char *, unsigned int *, const RSA *);
typedef int (*mtls_rsa_finish_fn)(RSA *);
typedef int (*mtls_ec_sign_fn)(int, const unsigned char *, int, unsigned char *, unsigned int *, const BIGNUM *,
                               const BIGNUM *, EC_KEY *);
typedef void (*mtls_ec_finish_fn)(EC_KEY *);
static inline int mtls_rsa_ex_index(void) { return RSA_get_ex_new_index(0, NULL, NULL, NULL, NULL); }
static inline int mtls_ec_ex_index(void) { return EC_KEY_get_ex_new_index(0, NULL, NULL, NULL, NULL); }
static inline void *mtls_rsa_get_ex(const RSA *r, int i) { return RSA_get_ex_data(r, i); }
static inline void *mtls_ec_get_ex(const EC_KEY *k, int i) { return EC_KEY_get_ex_data(k, i); }
static inline RSA_METHOD *mtls_token_rsa_method(mtls_rsa_priv_enc_fn enc, mtls_rsa_sign_fn sign, mtls_rsa_finish_fn finish) {
    RSA_METHOD *m = RSA_meth_dup(RSA_PKCS1_OpenSSL());
    if (m == NULL) return NULL;
    RSA_meth_set1_name(m, "mtls-proxy token key");
    RSA_meth_set_priv_enc(m, enc);
    RSA_meth_set_sign(m, sign);
    RSA_meth_set_finish(m, finish);
    return m;
}
/* The default method's own clean-up, for the front key's finish. */
static inline int mtls_rsa_default_finish(RSA *r) {
    int (*f)(RSA *) = RSA_meth_get_finish(RSA_PKCS1_OpenSSL());
    return f ? f(r) : 1;
}
static inline EC_KEY_METHOD *mtls_token_ec_method(mtls_ec_sign_fn sign, mtls_ec_finish_fn finish) {
    EC_KEY_METHOD *m = EC_KEY_METHOD_new(EC_KEY_OpenSSL());
    if (m == NULL) return NULL;
    int (*init)(EC_KEY *) = NULL; void (*fin)(EC_KEY *) = NULL; int (*copy)(EC_KEY *, const EC_KEY *) = NULL;
    int (*group)(EC_KEY *, const EC_GROUP *) = NULL; int (*priv)(EC_KEY *, const BIGNUM *) = NULL;
    int (*pub)(EC_KEY *, const EC_POINT *) = NULL;
    EC_KEY_METHOD_get_init(m, &init, &fin, &copy, &group, &priv, &pub);
    EC_KEY_METHOD_set_init(m, init, finish, copy, group, priv, pub);
    int (*osign)(int, const unsigned char *, int, unsigned char *, unsigned int *, const BIGNUM *, const BIGNUM *, EC_KEY *) = NULL;
    int (*setup)(EC_KEY *, BN_CTX *, BIGNUM **, BIGNUM **) = NULL;
    ECDSA_SIG *(*sig)(const unsigned char *, int, const BIGNUM *, const BIGNUM *, EC_KEY *) = NULL;
    EC_KEY_METHOD_get_sign(m, &osign, &setup, &sig);
    EC_KEY_METHOD_set_sign(m, sign, setup, sig);
    return m;
}
/* A public-only key shaped like `token` under the front methods, with `signer` in its ex_data. NULL for a key
   type other than RSA and EC. */
static inline EVP_PKEY *mtls_token_front_key(EVP_PKEY *token, RSA_METHOD *rm, EC_KEY_METHOD *em, int rsaIndex,
                                             int ecIndex, void *signer) {
    EVP_PKEY *front = EVP_PKEY_new();
    if (front == NULL) return NULL;
    if (EVP_PKEY_get_base_id(token) == EVP_PKEY_RSA) {
        const RSA *src = EVP_PKEY_get0_RSA(token);
        const BIGNUM *n = NULL, *e = NULL;
        RSA *r = src ? RSA_new() : NULL;
        if (r == NULL) goto fail;
        RSA_get0_key(src, &n, &e, NULL);
        if (RSA_set_method(r, rm) != 1 || RSA_set0_key(r, BN_dup(n), BN_dup(e), NULL) != 1
            || EVP_PKEY_assign_RSA(front, r) != 1) { RSA_free(r); goto fail; }
        if (RSA_set_ex_data(r, rsaIndex, signer) != 1) goto fail;  /* (the signer is released by the finish only once set) */
        return front;
    }
    if (EVP_PKEY_get_base_id(token) == EVP_PKEY_EC) {
        const EC_KEY *src = EVP_PKEY_get0_EC_KEY(token);
        EC_KEY *k = src ? EC_KEY_new() : NULL;
        if (k == NULL) goto fail;
        if (EC_KEY_set_method(k, em) != 1 || EC_KEY_set_group(k, EC_KEY_get0_group(src)) != 1
            || EC_KEY_set_public_key(k, EC_KEY_get0_public_key(src)) != 1
            || EVP_PKEY_assign_EC_KEY(front, k) != 1) { EC_KEY_free(k); goto fail; }
        if (EC_KEY_set_ex_data(k, ecIndex, signer) != 1) goto fail;
        return front;
    }
fail:
    EVP_PKEY_free(front);
    return NULL;
}
/* The private operations, done with the token key (the engine's methods talk to the token). */
static inline int mtls_token_rsa_private_encrypt(EVP_PKEY *token, int flen, const unsigned char *from, unsigned char *to, int padding) {
    RSA *r = (RSA *)EVP_PKEY_get0_RSA(token);
    return r ? RSA_private_encrypt(flen, from, to, r, padding) : -1;
}
static inline int mtls_token_rsa_sign(EVP_PKEY *token, int type, const unsigned char *m, unsigned int mlen, unsigned char *sig, unsigned int *siglen) {
    RSA *r = (RSA *)EVP_PKEY_get0_RSA(token);
    return r ? RSA_sign(type, m, mlen, sig, siglen, r) : 0;
}
static inline int mtls_token_ecdsa_sign(EVP_PKEY *token, const unsigned char *dgst, int dlen, unsigned char *sig, unsigned int *siglen) {
    EC_KEY *k = (EC_KEY *)EVP_PKEY_get0_EC_KEY(token);
    return k ? ECDSA_sign(0, dgst, dlen, sig, siglen, k) : 0;
}
/* Signing off the event loop (token keys): the handshake runs as an OpenSSL ASYNC job, which pauses while a
   signing thread works and tells the loop through an eventfd. */
static inline void mtls_SSL_CTX_set_mode_async(SSL_CTX *ctx) { SSL_CTX_set_mode(ctx, SSL_MODE_ASYNC); }
static inline void mtls_SSL_clear_mode_async(SSL *ssl) { SSL_clear_mode(ssl, SSL_MODE_ASYNC); }
/* The one fd a paused handshake waits on, or -1. */
static inline int mtls_SSL_async_fd(SSL *ssl) {
    OSSL_ASYNC_FD fds[4];
    size_t n = 0;
    if (SSL_get_all_async_fds(ssl, NULL, &n) != 1 || n == 0 || n > 4) return -1;
    if (SSL_get_all_async_fds(ssl, fds, &n) != 1) return -1;
    return fds[n - 1];
}
typedef void (*mtls_async_cleanup_fn)(ASYNC_WAIT_CTX *, const void *, OSSL_ASYNC_FD, void *);
/* Cuts a paused handshake off its socket (a null BIO both ways), so that it can be resumed to its end after the
   socket is closed: a connection given up while its token signature is made. */
static inline int mtls_SSL_cut_off_socket(SSL *ssl) {
    BIO *b = BIO_new(BIO_s_null());
    if (b == NULL) return 0;
    SSL_set_bio(ssl, b, b);  /* one reference, used both ways; the socket BIO (BIO_NOCLOSE) is freed */
    return 1;
}

/* A signature with a key an OpenSSL 3 provider holds (a TPM's): a one-shot EVP_PKEY_sign over the digest, never
   a digest-sign context (which libssl would duplicate, and tpm2-openssl 1.1 cannot). `mdname` and `padding`
   (RSA; 0 for the default) are set when given. */
static inline int mtls_provider_sign(EVP_PKEY *k, const char *mdname, int padding, const unsigned char *in, size_t inlen,
                                     unsigned char *out, size_t *outlen) {
    /* The signature algorithm from the key's own provider (the default one would take a public copy). */
    char query[128] = "";
    const OSSL_PROVIDER *p = EVP_PKEY_get0_provider(k);
    if (p != NULL) snprintf(query, sizeof query, "?provider=%s", OSSL_PROVIDER_get0_name(p));
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(NULL, k, query[0] ? query : NULL);
    if (c == NULL) return 0;
    int ok = EVP_PKEY_sign_init(c) == 1;
    if (ok && padding != 0) ok = EVP_PKEY_CTX_set_rsa_padding(c, padding) == 1;
    if (ok && mdname != NULL) {
        EVP_MD *md = EVP_MD_fetch(NULL, mdname, NULL);
        ok = md != NULL && EVP_PKEY_CTX_set_signature_md(c, md) == 1;
        EVP_MD_free(md);
    }
    if (ok) ok = EVP_PKEY_sign(c, out, outlen, in, inlen) == 1;
    EVP_PKEY_CTX_free(c);
    return ok;
}

/* An error on the queue saying why a token key did not sign (library ERR_LIB_USER: see ConnectFailures). */
static inline void mtls_token_raise(const char *why) { ERR_raise_data(ERR_LIB_USER, 1, "%s", why); }
#pragma clang diagnostic pop

#endif
