// scripts/build writes build_commit.h (not committed) with the commit it builds from; a plain `swift build`
// has no such file and reports "unknown".
#include "build_info.h"

#if __has_include("build_commit.h")
#include "build_commit.h"
#endif

#ifndef MTLS_PROXY_COMMIT
#define MTLS_PROXY_COMMIT "unknown"
#endif
#ifndef MTLS_PROXY_SWIFT_VERSION
#define MTLS_PROXY_SWIFT_VERSION ""
#endif

const char *mtls_proxy_build_commit(void) { return MTLS_PROXY_COMMIT; }
const char *mtls_proxy_build_swift_version(void) { return MTLS_PROXY_SWIFT_VERSION; }
