//! GenAI metrics at the edge, per tenant, model and backend, under the OpenTelemetry GenAI
//! semantic conventions' names, in Envoy's own stats (and so its /stats/prometheus):
//!
//!   gen_ai.tenant.<t>.model.<m>.backend.<b>.server.time_to_first_token     histogram, ms (streams)
//!   gen_ai.tenant.<t>.model.<m>.backend.<b>.server.time_per_output_token   histogram, ms (streams)
//!   gen_ai.tenant.<t>.model.<m>.backend.<b>.server.request.duration        histogram, ms
//!   gen_ai.tenant.<t>.model.<m>.backend.<b>.client.token.usage.input       counter, tokens
//!   gen_ai.tenant.<t>.model.<m>.backend.<b>.client.token.usage.output      counter, tokens
//!   gen_ai.tenant.<t>.model.<m>.backend.<b>.server.requests.in_flight      gauge: the demand
//!
//! Envoy stores them as `wasmcustom.<name>`; the edge bootstrap's stats_tags turn tenant, model,
//! backend and the token type into labels. A model name's dots become '_' (a dot separates the
//! parts of a stat name); a request without a tenant counts under `none`.
//!
//! Ids are defined on first use of a (tenant, model, backend) and kept in a bounded table per VM;
//! past `series_max` a new combination is not measured (and `gen_ai.series_overflow` counts it).
const std = @import("std");
const assert = std.debug.assert;
const abi = @import("abi");
const host = abi.host;
const config = @import("config.zig");

pub const series_max = 256;

pub const Series = struct {
    tenant: config.Tenant = .{},
    model: config.Name = .{},
    backend: config.Tenant = .{},
    ttft: u32 = 0,
    tpot: u32 = 0,
    duration: u32 = 0,
    input: u32 = 0,
    output: u32 = 0,
    in_flight: u32 = 0,
};

var series: [series_max]Series = undefined;
var series_len: u16 = 0;
var overflow: ?u32 = null;

/// The index of the series of (tenant, model, backend), defining its metrics the first time;
/// null when the table is full.
pub fn seriesOf(tenant: []const u8, model: []const u8, backend: []const u8) ?u16 {
    const who = if (tenant.len == 0) "none" else tenant;
    for (series[0..series_len], 0..) |*s, i| {
        if (std.mem.eql(u8, s.tenant.slice(), who) and std.mem.eql(u8, s.model.slice(), model) and
            std.mem.eql(u8, s.backend.slice(), backend)) return @intCast(i);
    }
    if (series_len == series_max) {
        if (overflow == null) overflow = host.defineMetric(.counter, "gen_ai.series_overflow");
        if (overflow) |id| host.incrementMetric(id, 1);
        return null;
    }
    const s = &series[series_len];
    s.* = .{};
    s.tenant.set(who);
    s.model.set(model);
    s.backend.set(backend);
    var model_part: config.Name = s.model;
    std.mem.replaceScalar(u8, model_part.bytes[0..model_part.len], '.', '_');
    const prefix_args = .{ who, model_part.slice(), backend };
    s.ttft = define(.histogram, "server.time_to_first_token", prefix_args);
    s.tpot = define(.histogram, "server.time_per_output_token", prefix_args);
    s.duration = define(.histogram, "server.request.duration", prefix_args);
    s.input = define(.counter, "client.token.usage.input", prefix_args);
    s.output = define(.counter, "client.token.usage.output", prefix_args);
    s.in_flight = define(.gauge, "server.requests.in_flight", prefix_args);
    series_len += 1;
    return @intCast(series_len - 1);
}

fn define(kind: host.MetricType, comptime metric: []const u8, args: anytype) u32 {
    var name: abi.BoundedString(256) = .{};
    name.print("gen_ai.tenant.{s}.model.{s}.backend.{s}." ++ metric, args);
    return host.defineMetric(kind, name.slice()) orelse 0;
}

pub fn get(index: u16) *const Series {
    assert(index < series_len);
    return &series[index];
}

/// A request admitted to a backend: one more in flight.
pub fn started(index: u16) void {
    host.incrementMetric(get(index).in_flight, 1);
}

/// A request whose end will not be seen (its state was displaced): no longer in flight.
pub fn abandoned(index: u16) void {
    host.incrementMetric(get(index).in_flight, -1);
}

pub const Ended = struct {
    duration_ns: u64,
    /// Streams: from the request to the first event, and the output tokens after it.
    first_token_ns: ?u64,
    last_event_ns: u64,
    input_tokens: ?u64,
    output_tokens: ?u64,
};

pub fn ended(index: u16, e: Ended) void {
    const s = get(index);
    host.incrementMetric(s.in_flight, -1);
    host.recordMetric(s.duration, e.duration_ns / std.time.ns_per_ms);
    if (e.first_token_ns) |first| {
        host.recordMetric(s.ttft, first / std.time.ns_per_ms);
        const output = e.output_tokens orelse 0;
        if (output > 1 and e.last_event_ns > first) {
            host.recordMetric(s.tpot, (e.last_event_ns - first) / (output - 1) / std.time.ns_per_ms);
        }
    }
    if (e.input_tokens) |n| host.incrementMetric(s.input, @intCast(n));
    if (e.output_tokens) |n| host.incrementMetric(s.output, @intCast(n));
}
