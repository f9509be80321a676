/*
 * autodir.h — the C API of libautodir: AutoDIR all-in-one image restoration on the CPU.
 *
 * Conventions: every symbol is prefixed `autodir_`; the library is built by `swift build -c release`
 * as .build/release/libautodir.so. This header is the only C API.
 *
 * Runtime dependencies of libautodir.so: the Swift runtime libraries (libswiftCore.so,
 * libFoundation.so, libdispatch.so, … from the toolchain's usr/lib/swift/linux), libopenblas,
 * libpng16 and libzmq.
 *
 * Thread safety: autodir_version() may be called from any thread.
 */
#ifndef AUTODIR_H
#define AUTODIR_H

#ifdef __cplusplus
extern "C" {
#endif

#define AUTODIR_VERSION_MAJOR 0
#define AUTODIR_VERSION_MINOR 1
#define AUTODIR_VERSION_PATCH 0
/* major * 10000 + minor * 100 + patch, as returned by autodir_version(). */
#define AUTODIR_VERSION (AUTODIR_VERSION_MAJOR * 10000 + AUTODIR_VERSION_MINOR * 100 + AUTODIR_VERSION_PATCH)

/* The version of the loaded library (major * 10000 + minor * 100 + patch); compare with AUTODIR_VERSION. */
int autodir_version(void);

#ifdef __cplusplus
}
#endif

#endif /* AUTODIR_H */
