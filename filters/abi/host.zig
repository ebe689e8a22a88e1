//! Host imports of the proxy-wasm ABI 0.2.1 ("env" module) and thin, allocation-free wrappers.
//!
//! Memory: every value the host returns is written into memory the host obtains from the module's
//! `proxy_on_memory_allocate` export, which filters implement with `allocate` below: a bump arena
//! reset by `beginCallback` at the entry of every exported callback. Values returned by these
//! wrappers are therefore valid until the current callback returns, and never need freeing.
//!
//! Only the imports a filter actually calls end up in its module (Zig emits referenced externs only).
const std = @import("std");
const assert = std.debug.assert;
const Arena = @import("arena.zig").Arena;
const BoundedString = @import("bounded.zig").BoundedString;

pub const Status = enum(u32) {
    ok = 0,
    not_found = 1,
    bad_argument = 2,
    serialization_failure = 3,
    parse_failure = 4,
    bad_expression = 5,
    invalid_memory_access = 6,
    empty = 7,
    cas_mismatch = 8,
    result_mismatch = 9,
    internal_failure = 10,
    broken_connection = 11,
    unimplemented = 12,
    _,
};

pub const LogLevel = enum(u32) { trace = 0, debug = 1, info = 2, warn = 3, err = 4, critical = 5 };

pub const MapType = enum(u32) {
    request_headers = 0,
    request_trailers = 1,
    response_headers = 2,
    response_trailers = 3,
    grpc_receive_initial_metadata = 4,
    grpc_receive_trailing_metadata = 5,
    http_call_response_headers = 6,
    http_call_response_trailers = 7,
};

pub const BufferType = enum(u32) {
    http_request_body = 0,
    http_response_body = 1,
    downstream_data = 2,
    upstream_data = 3,
    http_call_response_body = 4,
    grpc_receive_buffer = 5,
    vm_configuration = 6,
    plugin_configuration = 7,
};

/// Return value of the header/body callbacks.
pub const Action = enum(u32) { @"continue" = 0, pause = 1 };

pub const MetricType = enum(u32) { counter = 0, gauge = 1, histogram = 2 };

/// gRPC status passed to send_local_response for non-gRPC replies.
pub const grpc_status_none: i32 = -1;
pub const grpc_status_resource_exhausted: i32 = 8;

extern "env" fn proxy_log(level: u32, message_ptr: [*]const u8, message_len: usize) u32;
extern "env" fn proxy_get_current_time_nanoseconds(return_time: *u64) u32;
extern "env" fn proxy_get_property(path_ptr: [*]const u8, path_len: usize, return_value_ptr: *usize, return_value_len: *usize) u32;
extern "env" fn proxy_get_header_map_value(map_type: u32, key_ptr: [*]const u8, key_len: usize, return_value_ptr: *usize, return_value_len: *usize) u32;
extern "env" fn proxy_add_header_map_value(map_type: u32, key_ptr: [*]const u8, key_len: usize, value_ptr: [*]const u8, value_len: usize) u32;
extern "env" fn proxy_replace_header_map_value(map_type: u32, key_ptr: [*]const u8, key_len: usize, value_ptr: [*]const u8, value_len: usize) u32;
extern "env" fn proxy_remove_header_map_value(map_type: u32, key_ptr: [*]const u8, key_len: usize) u32;
extern "env" fn proxy_get_header_map_pairs(map_type: u32, return_map_ptr: *usize, return_map_len: *usize) u32;
extern "env" fn proxy_get_buffer_bytes(buffer_type: u32, start: usize, max_size: usize, return_buffer_ptr: *usize, return_buffer_len: *usize) u32;
extern "env" fn proxy_set_buffer_bytes(buffer_type: u32, start: usize, length: usize, data_ptr: [*]const u8, data_len: usize) u32;
extern "env" fn proxy_get_shared_data(key_ptr: [*]const u8, key_len: usize, return_value_ptr: *usize, return_value_len: *usize, return_cas: *u32) u32;
extern "env" fn proxy_set_shared_data(key_ptr: [*]const u8, key_len: usize, value_ptr: [*]const u8, value_len: usize, cas: u32) u32;
extern "env" fn proxy_define_metric(metric_type: u32, name_ptr: [*]const u8, name_len: usize, return_metric_id: *u32) u32;
extern "env" fn proxy_increment_metric(metric_id: u32, offset: i64) u32;
extern "env" fn proxy_record_metric(metric_id: u32, value: u64) u32;
extern "env" fn proxy_get_metric(metric_id: u32, return_value: *u64) u32;
extern "env" fn proxy_send_local_response(status_code: u32, details_ptr: [*]const u8, details_len: usize, body_ptr: [*]const u8, body_len: usize, headers_ptr: [*]const u8, headers_len: usize, grpc_status: i32) u32;
extern "env" fn proxy_set_tick_period_milliseconds(period: u32) u32;

// ---------------------------------------------------------------------------------------------
// Memory handed to the host.

/// Upper bound on the bytes the host may return within one callback (all values together).
/// Envoy's default request header limit is 60 KiB and plugin configurations are bounded by the
/// filters well below this.
pub const scratch_capacity = 256 * 1024;
var scratch: Arena(scratch_capacity) = .{};

/// Implementation of `proxy_on_memory_allocate`; null when the arena is exhausted (the host then
/// fails the call that needed the memory, and the wrapper reports the value as unavailable).
pub fn allocate(size: usize) ?[*]u8 {
    return scratch.alloc(size);
}

/// Must be called first in every exported callback: releases the previous callback's values.
pub fn beginCallback() void {
    scratch.reset();
}

fn slice(ptr: usize, len: usize) []const u8 {
    if (len == 0) return &.{};
    assert(ptr != 0);
    const p: [*]const u8 = @ptrFromInt(ptr);
    return p[0..len];
}

/// The (pointer, length) out-parameters of a host call returning bytes in arena memory.
const Returned = struct {
    ptr: usize = 0,
    len: usize = 0,

    /// The bytes, when the call that filled `self` returned `status` ok; else null.
    fn bytes(self: *const Returned, status: u32) ?[]const u8 {
        if (@as(Status, @enumFromInt(status)) != .ok) return null;
        return slice(self.ptr, self.len);
    }
};

// ---------------------------------------------------------------------------------------------
// Logging and clock (safe before proxy_on_vm_start).

pub fn log(level: LogLevel, message: []const u8) void {
    _ = proxy_log(@intFromEnum(level), message.ptr, message.len);
}

/// Formats into a fixed buffer; longer messages are truncated (marked with "...").
pub fn logf(level: LogLevel, comptime fmt: []const u8, args: anytype) void {
    var message: BoundedString(log_message_max) = .{};
    message.print(fmt, args);
    log(level, message.slice());
}
pub const log_message_max = 1024;

/// Wall-clock time in nanoseconds since the Unix epoch (the only clock of ABI 0.2.1; Envoy
/// returns the same system clock to every worker).
pub fn nowNanos() u64 {
    var now: u64 = 0;
    const status: Status = @enumFromInt(proxy_get_current_time_nanoseconds(&now));
    assert(status == .ok);
    return now;
}

// ---------------------------------------------------------------------------------------------
// Properties.

/// `path` is the segments joined by '\0', e.g. "xds\x00route_name". Null when absent.
pub fn getProperty(path: []const u8) ?[]const u8 {
    var value: Returned = .{};
    const status = proxy_get_property(path.ptr, path.len, &value.ptr, &value.len);
    return value.bytes(status);
}

// ---------------------------------------------------------------------------------------------
// Header maps.

/// Value of a header (name lowercase), null when absent.
pub fn getHeader(map: MapType, name: []const u8) ?[]const u8 {
    var value: Returned = .{};
    const status = proxy_get_header_map_value(@intFromEnum(map), name.ptr, name.len, &value.ptr, &value.len);
    return value.bytes(status);
}

pub fn addHeader(map: MapType, name: []const u8, value: []const u8) Status {
    return @enumFromInt(proxy_add_header_map_value(@intFromEnum(map), name.ptr, name.len, value.ptr, value.len));
}

pub fn replaceHeader(map: MapType, name: []const u8, value: []const u8) Status {
    return @enumFromInt(proxy_replace_header_map_value(@intFromEnum(map), name.ptr, name.len, value.ptr, value.len));
}

pub fn removeHeader(map: MapType, name: []const u8) Status {
    return @enumFromInt(proxy_remove_header_map_value(@intFromEnum(map), name.ptr, name.len));
}

/// All pairs of a map in the wire format (iterate with `pairs.Iterator`); null on failure.
pub fn getHeaderPairs(map: MapType) ?[]const u8 {
    var value: Returned = .{};
    const status = proxy_get_header_map_pairs(@intFromEnum(map), &value.ptr, &value.len);
    return value.bytes(status);
}

// ---------------------------------------------------------------------------------------------
// Buffers.

pub fn getBuffer(buffer: BufferType, start: usize, max_size: usize) ?[]const u8 {
    var value: Returned = .{};
    const status = proxy_get_buffer_bytes(@intFromEnum(buffer), start, max_size, &value.ptr, &value.len);
    if (value.len > max_size) return null;
    return value.bytes(status);
}

/// Replaces `length` bytes at `start` of a buffer (a request or response body being buffered)
/// with `data`; the body's length changes by `data.len - length`.
pub fn setBuffer(buffer: BufferType, start: usize, length: usize, data: []const u8) Status {
    return @enumFromInt(proxy_set_buffer_bytes(@intFromEnum(buffer), start, length, data.ptr, data.len));
}

/// The plugin configuration, to be called from proxy_on_configure with its size argument.
pub fn getPluginConfiguration(size: usize) ?[]const u8 {
    if (size == 0) return &.{};
    return getBuffer(.plugin_configuration, 0, size);
}

// ---------------------------------------------------------------------------------------------
// Shared data: one key/value store per vm_id, shared by every worker's VM. Each write bumps the
// key's cas; a write with a non-zero cas fails with cas_mismatch if the key changed since the read.
// Writes to a key that does not exist always succeed (there is no atomic create), and there is no
// delete: a filter must bound its own key space.

pub const SharedValue = struct { value: []const u8, cas: u32 };

pub const SharedGet = union(enum) {
    found: SharedValue,
    not_found,
    failed: Status,
};

pub fn getSharedData(key: []const u8) SharedGet {
    var ptr: usize = 0;
    var len: usize = 0;
    var cas: u32 = 0;
    const status: Status = @enumFromInt(proxy_get_shared_data(key.ptr, key.len, &ptr, &len, &cas));
    return switch (status) {
        .ok => .{ .found = .{ .value = slice(ptr, len), .cas = cas } },
        .not_found => .not_found,
        else => .{ .failed = status },
    };
}

/// cas = 0 writes unconditionally.
pub fn setSharedData(key: []const u8, value: []const u8, cas: u32) Status {
    return @enumFromInt(proxy_set_shared_data(key.ptr, key.len, value.ptr, value.len, cas));
}

// ---------------------------------------------------------------------------------------------
// Metrics. Envoy prefixes names with "wasmcustom." and drops that prefix again in /stats output.

pub fn defineMetric(metric_type: MetricType, name: []const u8) ?u32 {
    var id: u32 = 0;
    const status: Status = @enumFromInt(proxy_define_metric(@intFromEnum(metric_type), name.ptr, name.len, &id));
    if (status != .ok) return null;
    return id;
}

pub fn incrementMetric(id: u32, offset: i64) void {
    _ = proxy_increment_metric(id, offset);
}

pub fn recordMetric(id: u32, value: u64) void {
    _ = proxy_record_metric(id, value);
}

pub fn getMetric(id: u32) ?u64 {
    var value: u64 = 0;
    const status: Status = @enumFromInt(proxy_get_metric(id, &value));
    if (status != .ok) return null;
    return value;
}

// ---------------------------------------------------------------------------------------------
// Local responses and timers.

/// Sends a reply without contacting the upstream; the calling callback must then return
/// `Action.pause`. `headers` is in the pairs wire format (see pairs.zig). `grpc_status` is
/// `grpc_status_none` for non-gRPC replies.
pub fn sendLocalResponse(status_code: u32, details: []const u8, body: []const u8, headers: []const u8, grpc_status: i32) Status {
    return @enumFromInt(proxy_send_local_response(status_code, details.ptr, details.len, body.ptr, body.len, headers.ptr, headers.len, grpc_status));
}

pub fn setTickPeriod(milliseconds: u32) Status {
    return @enumFromInt(proxy_set_tick_period_milliseconds(milliseconds));
}
