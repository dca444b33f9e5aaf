#ifndef MTLS_PROXY_CNGHTTP2_SHIM_H
#define MTLS_PROXY_CNGHTTP2_SHIM_H

/* libnghttp2 (Debian libnghttp2-dev): the HTTP/2 framing, HPACK and flow control of the upstream side. */
#include <sys/types.h>
#include <stddef.h>
#include <stdint.h>
#include <nghttp2/nghttp2.h>

#endif
