//! The ceiling for any proxy-wasm filter in the georoute benchmark: the same VM crossing per
//! stream as sluice's georoute filter (proxy_on_request_headers only), reading one request header
//! and nothing else. Built by bench/georoute_bench.py:
//!   zig build-exe georoute_empty_filter.zig -target wasm32-wasi -O ReleaseSafe -fno-entry -rdynamic
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
