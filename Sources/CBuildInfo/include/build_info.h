#ifndef MTLS_PROXY_BUILD_INFO_H
#define MTLS_PROXY_BUILD_INFO_H

/// The git commit the binary was built from ("unknown" when the build did not record it), and the Swift
/// compiler version scripts/build saw ("" when not recorded).
const char *mtls_proxy_build_commit(void);
const char *mtls_proxy_build_swift_version(void);

#endif
