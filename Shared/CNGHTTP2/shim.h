// The one place where the project touches libnghttp2's C API.
//
// Debian 12 ships libnghttp2 1.52, which only has the `ssize_t` forms of the session I/O
// functions and data providers; 1.60 added `*2` variants with `nghttp2_ssize` and deprecated
// the old ones. The `cdp_` wrappers below pick whichever the installed headers provide, so the
// Swift code is written once against a single signature (`ptrdiff_t` results, the v1 data
// provider layout, which both versions accept).
#ifndef CDP_CNGHTTP2_SHIM_H
#define CDP_CNGHTTP2_SHIM_H

#include <nghttp2/nghttp2.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#if NGHTTP2_VERSION_NUM >= 0x013c00
#define CDP_NGHTTP2_HAS_V2_API 1
#else
#define CDP_NGHTTP2_HAS_V2_API 0
#endif

/// The read callback of a response or request body, in the signature the Swift side implements.
typedef ptrdiff_t (*cdp_data_source_read_callback)(
    nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length, uint32_t *data_flags,
    nghttp2_data_source *source, void *user_data);

static inline ptrdiff_t cdp_session_mem_recv(nghttp2_session *session, const uint8_t *in, size_t inlen) {
#if CDP_NGHTTP2_HAS_V2_API
    return (ptrdiff_t)nghttp2_session_mem_recv2(session, in, inlen);
#else
    return (ptrdiff_t)nghttp2_session_mem_recv(session, in, inlen);
#endif
}

static inline ptrdiff_t cdp_session_mem_send(nghttp2_session *session, const uint8_t **data_ptr) {
#if CDP_NGHTTP2_HAS_V2_API
    return (ptrdiff_t)nghttp2_session_mem_send2(session, data_ptr);
#else
    return (ptrdiff_t)nghttp2_session_mem_send(session, data_ptr);
#endif
}

#if CDP_NGHTTP2_HAS_V2_API
// Adapts the project's read callback to the v2 signature (nghttp2_ssize). The project's callback
// travels in `source->ptr` (POSIX allows function pointers in `void *`), so there is no global state.
static inline nghttp2_ssize cdp_read_callback_v2(
    nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length, uint32_t *data_flags,
    nghttp2_data_source *source, void *user_data) {
    cdp_data_source_read_callback read_callback = (cdp_data_source_read_callback)source->ptr;
    return (nghttp2_ssize)read_callback(session, stream_id, buf, length, data_flags, source, user_data);
}
#endif

/// Submits response headers with a body produced by `read_callback` (or none when it is NULL).
static inline int cdp_submit_response(
    nghttp2_session *session, int32_t stream_id, const nghttp2_nv *nva, size_t nvlen,
    cdp_data_source_read_callback read_callback) {
#if CDP_NGHTTP2_HAS_V2_API
    if (read_callback == NULL) {
        return nghttp2_submit_response2(session, stream_id, nva, nvlen, NULL);
    }
    nghttp2_data_provider2 provider;
    provider.source.ptr = (void *)read_callback;
    provider.read_callback = cdp_read_callback_v2;
    return nghttp2_submit_response2(session, stream_id, nva, nvlen, &provider);
#else
    if (read_callback == NULL) {
        return nghttp2_submit_response(session, stream_id, nva, nvlen, NULL);
    }
    nghttp2_data_provider provider;
    provider.source.ptr = NULL;
    provider.read_callback = (nghttp2_data_source_read_callback)read_callback;
    return nghttp2_submit_response(session, stream_id, nva, nvlen, &provider);
#endif
}

/// Submits a request whose body is produced by `read_callback`; returns the stream id or an error.
static inline int32_t cdp_submit_request(
    nghttp2_session *session, const nghttp2_nv *nva, size_t nvlen, cdp_data_source_read_callback read_callback,
    void *stream_user_data) {
#if CDP_NGHTTP2_HAS_V2_API
    nghttp2_data_provider2 provider;
    provider.source.ptr = (void *)read_callback;
    provider.read_callback = cdp_read_callback_v2;
    return nghttp2_submit_request2(session, NULL, nva, nvlen, &provider, stream_user_data);
#else
    nghttp2_data_provider provider;
    provider.source.ptr = NULL;
    provider.read_callback = (nghttp2_data_source_read_callback)read_callback;
    return nghttp2_submit_request(session, NULL, nva, nvlen, &provider, stream_user_data);
#endif
}

// Integer constants with the types Swift wants at the call sites (C enums import as structs
// with UInt32 raw values, while frame fields are uint8_t / int32_t).
static const uint8_t CDP_FRAME_DATA = NGHTTP2_DATA;
static const uint8_t CDP_FRAME_HEADERS = NGHTTP2_HEADERS;
static const uint8_t CDP_FRAME_RST_STREAM = NGHTTP2_RST_STREAM;
static const uint8_t CDP_FRAME_SETTINGS = NGHTTP2_SETTINGS;
static const uint8_t CDP_FRAME_GOAWAY = NGHTTP2_GOAWAY;
static const uint8_t CDP_FLAG_END_STREAM = NGHTTP2_FLAG_END_STREAM;
static const uint8_t CDP_FLAG_END_HEADERS = NGHTTP2_FLAG_END_HEADERS;
static const uint8_t CDP_FLAG_NONE = NGHTTP2_FLAG_NONE;
static const uint8_t CDP_NV_FLAG_NONE = NGHTTP2_NV_FLAG_NONE;
static const uint32_t CDP_DATA_FLAG_EOF = NGHTTP2_DATA_FLAG_EOF;
static const uint32_t CDP_DATA_FLAG_NO_END_STREAM = NGHTTP2_DATA_FLAG_NO_END_STREAM;
static const int CDP_ERR_DEFERRED = NGHTTP2_ERR_DEFERRED;
static const int CDP_ERR_CALLBACK_FAILURE = NGHTTP2_ERR_CALLBACK_FAILURE;
static const int CDP_ERR_TEMPORAL_CALLBACK_FAILURE = NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
static const int32_t CDP_SETTINGS_MAX_CONCURRENT_STREAMS = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS;
static const int32_t CDP_SETTINGS_INITIAL_WINDOW_SIZE = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE;
static const int32_t CDP_SETTINGS_MAX_HEADER_LIST_SIZE = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE;
static const int32_t CDP_SETTINGS_MAX_FRAME_SIZE = NGHTTP2_SETTINGS_MAX_FRAME_SIZE;
static const uint32_t CDP_NO_ERROR = NGHTTP2_NO_ERROR;
static const uint32_t CDP_PROTOCOL_ERROR = NGHTTP2_PROTOCOL_ERROR;
static const uint32_t CDP_INTERNAL_ERROR = NGHTTP2_INTERNAL_ERROR;
static const uint32_t CDP_REFUSED_STREAM = NGHTTP2_REFUSED_STREAM;
static const uint32_t CDP_CANCEL = NGHTTP2_CANCEL;
static const uint32_t CDP_ENHANCE_YOUR_CALM = NGHTTP2_ENHANCE_YOUR_CALM;
static const uint8_t CDP_FLAG_ACK = NGHTTP2_FLAG_ACK;

#endif
