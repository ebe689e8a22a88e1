//! sluice `georoute`: a proxy-wasm (ABI 0.2.1) HTTP filter that tags each request with its
//! client's country and region, looked up by longest-prefix match in a table the control plane
//! sends as the plugin configuration (config.zig), so that routes can match on the region.
//!
//! Exports only what it needs, each export being a VM crossing per stream (or per VM):
//!   proxy_abi_version_0_2_1, proxy_on_memory_allocate,
//!   proxy_on_configure (once per plugin configuration: validate, then build the tables),
//!   proxy_on_request_headers (look up, set the headers).
//!
//! Per request: the client IP exactly as the ratelimit filter finds it (abi/client.zig), then
//! the region header is replaced (Envoy removes every value the client sent and sets ours) and
//! the country header replaced, or removed when the prefix names no country or nothing matched.
//! Unmatched clients get the default region. With ABI 0.2.x Envoy clears the route cache when a
//! filter changes request headers, so routes matching the region header see our value.
//!
//! Memory: static, sized by config.zig's bounds; nothing is allocated per request. The plugin
//! configuration is delivered straight into `staging` (see proxy_on_memory_allocate) and read in
//! place; a configuration is validated in full before the tables are rebuilt from it, so a
//! refused one leaves the previous table and settings in force.
const std = @import("std");
const assert = std.debug.assert;
const abi = @import("abi");
const host = abi.host;
const config = @import("config.zig");
const table = @import("table.zig");

pub const panic = abi.panic;

/// Where the host writes the plugin configuration (up to config.bytes_max bytes).
var staging: [config.bytes_max]u8 align(config.alignment) = undefined;
/// Non-zero only while proxy_on_configure reads a configuration of this many bytes.
var staging_expected: usize = 0;

var tables: table.Full = .{};
/// The active settings and the ones being parsed, swapped on success.
var settings: [2]config.Settings = undefined;
var active: u1 = 0;
var configured = false;

const Gauges = struct { prefixes: u32, ranges: u32, table_id: u32 };
var gauges: ?Gauges = null;

pub const metric_prefix = "sluice_georoute";

comptime {
    // What one VM holds (wasm linear memory; pages are touched only as a table uses them).
    assert(@sizeOf(@TypeOf(staging)) == config.bytes_max);
    assert(table.Full.bytes + config.bytes_max < 56 * 1024 * 1024);
    assert(@sizeOf(@TypeOf(settings)) < 256 * 1024);
}

export fn proxy_abi_version_0_2_1() void {}

/// The plugin configuration goes to `staging` (aligned, read in place, too large for the
/// scratch arena); every other value the host returns goes to the per-callback arena.
export fn proxy_on_memory_allocate(size: usize) ?[*]u8 {
    if (staging_expected != 0 and size == staging_expected) {
        assert(size <= staging.len);
        staging_expected = 0; // one delivery per configuration
        return &staging;
    }
    return host.allocate(size);
}

export fn proxy_on_configure(root_context_id: u32, plugin_configuration_size: u32) u32 {
    _ = root_context_id;
    host.beginCallback();
    const size: usize = plugin_configuration_size;
    if (size == 0 or size > config.bytes_max) {
        host.logf(.err, "georoute: rejected plugin configuration: {d} bytes, expected 1..{d}", .{ size, config.bytes_max });
        return 0;
    }
    staging_expected = size;
    const delivered = host.getPluginConfiguration(size);
    staging_expected = 0;
    const bytes = delivered orelse {
        host.log(.err, "georoute: rejected plugin configuration: could not read it");
        return 0;
    };
    if (bytes.ptr != &staging or bytes.len != size) {
        host.log(.err, "georoute: rejected plugin configuration: not delivered into the staging area");
        return 0;
    }

    const started = host.nowNanos();
    const next: u1 = if (configured) ~active else active;
    var views: config.Tables = undefined;
    var message: config.Message = .{};
    if (!config.parse(staging[0..size], &settings[next], &views, &message)) {
        host.logf(.err, "georoute: rejected plugin configuration: {s}", .{message.slice()});
        return 0;
    }
    // Valid: from here nothing can fail, so no request ever sees a half-built table (and none
    // runs on this VM while we build).
    tables.install(views);
    active = next;
    configured = true;

    const s = &settings[active];
    const prefix_count: u32 = @intCast(views.v4.addresses.len + views.v6.addresses.len);
    recordGauges(prefix_count, tables.ranges(), s.table_id);
    const built_us = (host.nowNanos() -| started) / 1000;
    host.logf(.info, "georoute: table {x:0>8}: {d} IPv4 and {d} IPv6 prefixes, {d} ranges, {d} labels, built in {d} us", .{
        s.table_id, views.v4.addresses.len, views.v6.addresses.len, tables.ranges(), s.label_count, built_us,
    });
    host.logf(.info, "georoute: headers {s}, {s}; default region {s}; xff_trusted_hops={d}", .{
        s.country_header.slice(), s.region_header.slice(), s.default_region.slice(), s.xff_trusted_hops,
    });
    return 1;
}

fn recordGauges(prefix_count: u32, range_count: u32, table_id: u32) void {
    if (gauges == null) {
        gauges = .{
            .prefixes = defineGauge(metric_prefix ++ ".prefixes"),
            .ranges = defineGauge(metric_prefix ++ ".ranges"),
            .table_id = defineGauge(metric_prefix ++ ".table_id"),
        };
    }
    host.recordMetric(gauges.?.prefixes, prefix_count);
    host.recordMetric(gauges.?.ranges, range_count);
    host.recordMetric(gauges.?.table_id, table_id);
}

fn defineGauge(name: []const u8) u32 {
    return host.defineMetric(.gauge, name) orelse blk: {
        host.logf(.err, "georoute: could not define metric {s}", .{name});
        break :blk 0;
    };
}

export fn proxy_on_request_headers(context_id: u32, num_headers: u32, end_of_stream: u32) u32 {
    _ = context_id;
    _ = num_headers;
    _ = end_of_stream;
    host.beginCallback();
    if (!configured) return @intFromEnum(host.Action.@"continue");
    const s = &settings[active];

    const client = abi.client.clientIp(s.xff_trusted_hops);
    const label = if (client.source == .unknown) table.unmatched else tables.lookup(&client.address.bytes);
    var region = s.default_region.slice();
    var country: []const u8 = "";
    if (label != table.unmatched) {
        assert(label < s.label_count);
        region = s.labels[label].region.slice();
        country = s.labels[label].country.slice();
    }
    assert(region.len > 0);

    // Replace: Envoy drops every value of the header (what the client sent) and sets ours.
    _ = host.replaceHeader(.request_headers, s.region_header.slice(), region);
    if (country.len > 0) {
        _ = host.replaceHeader(.request_headers, s.country_header.slice(), country);
    } else {
        _ = host.removeHeader(.request_headers, s.country_header.slice());
    }
    return @intFromEnum(host.Action.@"continue");
}
