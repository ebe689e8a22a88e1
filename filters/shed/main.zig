//! sluice `shed`: a proxy-wasm (ABI 0.2.1) HTTP filter that answers low-priority requests at the
//! edge with 429 and Retry-After while every replica that could serve them reports a full queue.
//!
//! Every answer from a sluice backend carries its load (ORCA `endpoint-load-metrics`); on response
//! headers this filter keeps the replica's `named_metrics.waiting` and the time, in shared data
//! keyed by the upstream address (one store for every worker's VM; only configured addresses, so
//! the key space is bounded). On request headers of a configured route, a request whose priority
//! header is below 0 is refused when every endpoint of the route has a fresh report at or over its
//! threshold. Priority 0 and above is never refused; a missing or stale report is not full, so the
//! filter fails open. Exports only configure, request headers and response headers.
const std = @import("std");
const assert = std.debug.assert;
const abi = @import("abi");
const host = abi.host;
const config = @import("config.zig");
const report = @import("report.zig");

pub const panic = abi.panic;

export fn proxy_abi_version_0_2_1() void {}

export fn proxy_on_memory_allocate(size: usize) ?[*]u8 {
    return host.allocate(size);
}

const route_name_property = "xds\x00route_name";
const upstream_address_property = "upstream\x00address";
const orca_header = "endpoint-load-metrics";
const key_prefix = "shed:";
const response_details = "sluice_shed_overloaded";
const body = "{\"error\":\"every replica is at its queue limit; retry later or with a higher priority\"}";

// State of this VM (one per worker thread). All statically allocated.
var configs: [2]config.Config = undefined;
var active_index: u1 = 0;
var configured = false;
var parse_work: [config.work_bytes]u8 = undefined;
var shed_counter: ?u32 = null;

fn activeConfig() ?*const config.Config {
    if (!configured) return null;
    return &configs[active_index];
}

export fn proxy_on_configure(root_context_id: u32, plugin_configuration_size: u32) u32 {
    _ = root_context_id;
    host.beginCallback();
    if (plugin_configuration_size > config.config_bytes_max) {
        host.logf(.err, "shed: rejected plugin configuration: {d} bytes, more than {d}", .{ plugin_configuration_size, config.config_bytes_max });
        return 0;
    }
    const json = host.getPluginConfiguration(plugin_configuration_size) orelse {
        host.log(.err, "shed: rejected plugin configuration: could not read it");
        return 0;
    };
    const next: u1 = if (configured) ~active_index else active_index;
    var message: config.Message = .{};
    if (!config.parse(json, &configs[next], &parse_work, &message)) {
        host.logf(.err, "shed: rejected plugin configuration: {s}", .{message.slice()});
        return 0;
    }
    active_index = next;
    configured = true;
    if (shed_counter == null) shed_counter = host.defineMetric(.counter, "sluice_shed_requests_total");
    host.logf(.info, "shed: configured {d} routes", .{configs[next].routes_len});
    return 1;
}

const continue_ = @intFromEnum(host.Action.@"continue");
const pause = @intFromEnum(host.Action.pause);

export fn proxy_on_request_headers(context_id: u32, num_headers: u32, end_of_stream: u32) u32 {
    _ = context_id;
    _ = num_headers;
    _ = end_of_stream;
    host.beginCallback();
    const cfg = activeConfig() orelse return continue_;
    if (cfg.routes_len == 0) return continue_;
    if (report.priority(host.getHeader(.request_headers, cfg.priority_header.slice())) >= 0) return continue_;
    const name = host.getProperty(route_name_property) orelse return continue_;
    const route = cfg.find(name) orelse return continue_;
    if (!allFull(route, host.nowNanos() / std.time.ns_per_ms)) return continue_;
    return refuse(route.retry_after_s);
}

fn allFull(route: *const config.Route, now_ms: u64) bool {
    assert(route.endpoints_len > 0);
    for (route.endpointSlice()) |*endpoint| {
        var key: abi.BoundedString(key_prefix.len + config.address_len_max) = .{};
        key.print("{s}{s}", .{ key_prefix, endpoint.address.slice() });
        const seen = switch (host.getSharedData(key.slice())) {
            .found => |found| report.Seen.decode(found.value) orelse return false,
            .not_found, .failed => return false,
        };
        if (!seen.full(endpoint.threshold, now_ms, route.max_age_ms)) return false;
    }
    return true;
}

fn refuse(retry_after_s: u32) u32 {
    var digits: [20]u8 = undefined;
    const retry_after = std.fmt.bufPrint(&digits, "{d}", .{retry_after_s}) catch unreachable;
    var headers_buffer: [128]u8 = undefined;
    const headers = abi.pairs.encode(&headers_buffer, &.{
        .{ .name = "content-type", .value = "application/json" },
        .{ .name = "retry-after", .value = retry_after },
    }) orelse unreachable;
    if (shed_counter) |id| host.incrementMetric(id, 1);
    const status = host.sendLocalResponse(429, response_details, body, headers, host.grpc_status_none);
    if (status != .ok) host.logf(.err, "shed: send_local_response failed: {d}", .{@intFromEnum(status)});
    return pause;
}

export fn proxy_on_response_headers(context_id: u32, num_headers: u32, end_of_stream: u32) u32 {
    _ = context_id;
    _ = num_headers;
    _ = end_of_stream;
    host.beginCallback();
    const cfg = activeConfig() orelse return continue_;
    if (cfg.routes_len == 0) return continue_;
    const text = host.getHeader(.response_headers, orca_header) orelse return continue_;
    const waiting = report.waiting(text) orelse return continue_;
    const address = host.getProperty(upstream_address_property) orelse return continue_;
    if (address.len > config.address_len_max or !cfg.knows(address)) return continue_;
    var key: abi.BoundedString(key_prefix.len + config.address_len_max) = .{};
    key.print("{s}{s}", .{ key_prefix, address });
    var buffer: [report.Seen.encoded_len]u8 = undefined;
    const seen: report.Seen = .{ .waiting = waiting, .at_ms = host.nowNanos() / std.time.ns_per_ms };
    // Last writer wins: every report is a fresh reading of the same replica.
    _ = host.setSharedData(key.slice(), seen.encode(&buffer), 0);
    return continue_;
}
