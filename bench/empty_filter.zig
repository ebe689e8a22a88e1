//! The ceiling for any proxy-wasm filter in sluice's filter benchmarks: reads one request header
//! and nothing else. Each benchmark exports the callbacks of the filter it measures, so the empty
//! filter costs the same VM crossings per stream (bench/envoy_wrk.py, `build_empty_filter`):
//!   ratelimit_bench.py: proxy_on_request_headers + proxy_on_response_headers
//!   georoute_bench.py:  proxy_on_request_headers only
//!   zig build-exe empty_filter.zig -target wasm32-wasi -O ReleaseSafe -fno-entry -fstrip
//!     --export=proxy_abi_version_0_2_1 --export=proxy_on_memory_allocate
//!     --export=proxy_on_request_headers [--export=proxy_on_response_headers]
var scratch: [64 * 1024]u8 align(8) = undefined;
var used: usize = 0;

extern "env" fn proxy_get_header_map_value(map_type: u32, key_ptr: [*]const u8, key_len: usize, value_ptr: *usize, value_len: *usize) u32;

export fn proxy_abi_version_0_2_1() void {}

export fn proxy_on_memory_allocate(size: usize) ?[*]u8 {
    if (size > scratch.len - used) return null;
    const start = used;
    used = (start + size + 7) & ~@as(usize, 7);
    if (used > scratch.len) used = scratch.len;
    return scratch[start..].ptr;
}

export fn proxy_on_request_headers(context_id: u32, num_headers: u32, end_of_stream: u32) u32 {
    _ = context_id;
    _ = num_headers;
    _ = end_of_stream;
    used = 0;
    var ptr: usize = 0;
    var len: usize = 0;
    const key = "x-forwarded-for";
    _ = proxy_get_header_map_value(0, key, key.len, &ptr, &len);
    return 0;
}

export fn proxy_on_response_headers(context_id: u32, num_headers: u32, end_of_stream: u32) u32 {
    _ = context_id;
    _ = num_headers;
    _ = end_of_stream;
    return 0;
}
