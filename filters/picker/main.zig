//! sluice `picker`: a proxy-wasm (ABI 0.2.1) HTTP filter that picks endpoints on the load the
//! backends report, and sheds low-priority requests when every replica is full; no hop, no
//! scraper, no other process.
//!
//! Every answer from a sluice backend carries its load (ORCA `endpoint-load-metrics`); on response
//! headers the filter keeps each replica's `named_metrics.waiting` and `running`, with the time,
//! in shared data keyed by upstream address (one store for every worker's VM; only configured
//! addresses, which bounds the key space); a 429 with `Retry-After` puts the replica in a cooldown
//! for that long. On a configured route (config.zig):
//!   - shedding: a request whose priority header is below 0 gets 429 + Retry-After while every
//!     endpoint has a fresh report at or over its threshold; 0 and above is never refused;
//!   - picking: the endpoint is named in `endpoint_header`, which the cluster's `override_host`
//!     policy follows: power of two choices on the reported load, skipping cooldowns (pick.zig), or
//!     with prefix affinity (the body is read for it) the replica this worker last sent the
//!     prompt's first bytes to while it likely still holds them (memo.zig) unless past the load
//!     bound (on its share of this worker's recent picks, memo.Recent; in flight, twice that),
//!     else the first in the prompt's rendezvous order at or under the mean load (pick.zig).
//!     Nothing known, or every endpoint cooling: no header, and the cluster's fallback policy
//!     picks (fail open). Retries go to the fallback too.
//! Clients cannot name an endpoint: the header is removed from every request first.
//!
//! The same module, with the same configuration, also runs as an upstream filter of each
//! least_loaded cluster: there it sees every try, so a 429 that Envoy retries on another replica
//! still puts its replica in cooldown. It only records there: it knows it is upstream because the
//! request already has an upstream host. (Both plugins share one VM per worker, vm_id and code
//! being the same, and with it the configuration: hence one configuration for both.)
const std = @import("std");
const assert = std.debug.assert;
const abi = @import("abi");
const host = abi.host;
const config = @import("config.zig");
const report = @import("report.zig");
const pick = @import("pick.zig");
const memo = @import("memo.zig");

pub const panic = abi.panic;

export fn proxy_abi_version_0_2_1() void {}

export fn proxy_on_memory_allocate(size: usize) ?[*]u8 {
    return host.allocate(size);
}

const route_name_property = "xds\x00route_name";
const upstream_address_property = "upstream\x00address";
const orca_header = "endpoint-load-metrics";
const key_prefix = "picker:";
const response_details = "sluice_picker_shed";
const shed_body = "{\"error\":\"every replica is at its queue limit; retry later or with a higher priority\"}";
/// The longest cooldown a replica's Retry-After can ask for.
const cooldown_s_max = 3600;

const Key = abi.BoundedString(key_prefix.len + config.address_len_max);

// State of this VM (one per worker thread). All statically allocated.
var configs: [2]config.Config = undefined;
var active_index: u1 = 0;
var configured = false;
var parse_work: [config.work_bytes]u8 = undefined;
var prng: ?std.Random.DefaultPrng = null;
var shed_counter: ?u32 = null;
var picked_counter: ?u32 = null;
var cooldown_counter: ?u32 = null;

// Requests this worker has sent to each endpoint and not yet finished: reports lag, so between
// two of them every pick would otherwise see the same figures and pile onto one replica. Indexed
// [route][endpoint] of the active configuration (reset when it changes); each stream remembers its
// slot in a table keyed by context id, freed when the stream is deleted.
const pending_max = 4096;
const Pending = struct { context_id: u32 = 0, route: u8 = 0, endpoint: u8 = 0 };
var pending: [pending_max]Pending = [_]Pending{.{}} ** pending_max;
var in_flight: [config.routes_max][config.endpoints_max]u32 = std.mem.zeroes([config.routes_max][config.endpoints_max]u32);
// Where this worker sent each prompt prefix lately, and how many of its last picks went to each
// endpoint (indexed like in_flight, reset with it).
var sent: memo.Memo = .{};
var recent: memo.Recent = .{};

fn activeConfig() ?*const config.Config {
    if (!configured) return null;
    return &configs[active_index];
}

export fn proxy_on_configure(root_context_id: u32, plugin_configuration_size: u32) u32 {
    _ = root_context_id;
    host.beginCallback();
    if (plugin_configuration_size > config.config_bytes_max) {
        host.logf(.err, "picker: rejected plugin configuration: {d} bytes, more than {d}", .{ plugin_configuration_size, config.config_bytes_max });
        return 0;
    }
    const json = host.getPluginConfiguration(plugin_configuration_size) orelse {
        host.log(.err, "picker: rejected plugin configuration: could not read it");
        return 0;
    };
    const next: u1 = if (configured) ~active_index else active_index;
    var message: config.Message = .{};
    if (!config.parse(json, &configs[next], &parse_work, &message)) {
        host.logf(.err, "picker: rejected plugin configuration: {s}", .{message.slice()});
        return 0;
    }
    active_index = next;
    // Indices change with the configuration: start counting afresh.
    pending = [_]Pending{.{}} ** pending_max;
    in_flight = std.mem.zeroes([config.routes_max][config.endpoints_max]u32);
    sent = .{};
    recent = .{};
    configured = true;
    if (shed_counter == null) shed_counter = host.defineMetric(.counter, "sluice_shed_requests_total");
    if (picked_counter == null) picked_counter = host.defineMetric(.counter, "sluice_picker_picked_total");
    if (cooldown_counter == null) cooldown_counter = host.defineMetric(.counter, "sluice_picker_cooldowns_total");
    host.logf(.info, "picker: configured {d} routes", .{configs[next].routes_len});
    return 1;
}

const continue_ = @intFromEnum(host.Action.@"continue");
const pause = @intFromEnum(host.Action.pause);

/// The configured route of this request, if any (read again in each callback: the scratch arena
/// holding the property is reset between callbacks).
fn currentRoute(cfg: *const config.Config) ?*const config.Route {
    const name = host.getProperty(route_name_property) orelse return null;
    return cfg.find(name);
}

export fn proxy_on_request_headers(context_id: u32, num_headers: u32, end_of_stream: u32) u32 {
    _ = num_headers;
    host.beginCallback();
    const cfg = activeConfig() orelse return continue_;
    if (cfg.routes_len == 0 or upstream()) return continue_;
    if (host.getHeader(.request_headers, cfg.endpoint_header.slice()) != null) {
        _ = host.removeHeader(.request_headers, cfg.endpoint_header.slice());
    }
    const route = currentRoute(cfg) orelse return continue_;
    const now_ms = host.nowNanos() / std.time.ns_per_ms;
    var candidates: [config.endpoints_max]pick.Candidate = undefined;
    var seen: [config.endpoints_max]report.Seen = undefined;
    readAll(route, now_ms, &seen, &candidates);
    if (route.shed_retry_after_s > 0 and report.priority(host.getHeader(.request_headers, cfg.priority_header.slice())) < 0 and
        allFull(route, seen[0..route.endpoints_len], now_ms))
    {
        return refuse(route.shed_retry_after_s);
    }
    if (!route.pick) return continue_;
    if (route.prefix_bytes > 0 and end_of_stream == 0) return pause; // the prompt decides
    var random = rng();
    const chosen = pick.twoChoices(candidates[0..route.endpoints_len], &random) orelse return continue_;
    choose(cfg, route, chosen, context_id);
    return continue_;
}

export fn proxy_on_request_body(context_id: u32, body_buffer_length: u32, end_of_stream: u32) u32 {
    host.beginCallback();
    const cfg = activeConfig() orelse return continue_;
    if (upstream()) return continue_;
    const route = currentRoute(cfg) orelse return continue_;
    if (!route.pick or route.prefix_bytes == 0) return continue_;
    if (end_of_stream == 0) return pause;
    // The window lies in the first bytes: "messages"/"prompt" come early in OpenAI bodies.
    const window_max = @min(body_buffer_length, route.prefix_bytes + 4096);
    const body = host.getBuffer(.http_request_body, 0, window_max) orelse return continue_;
    if (body.len == 0) return continue_;
    const key = pick.prefixKey(pick.promptWindow(body, route.prefix_bytes));
    const now_ms = host.nowNanos() / std.time.ns_per_ms;
    var candidates: [config.endpoints_max]pick.Candidate = undefined;
    var seen: [config.endpoints_max]report.Seen = undefined;
    readAll(route, now_ms, &seen, &candidates);
    var addresses: [config.endpoints_max][]const u8 = undefined;
    for (route.endpointSlice(), 0..) |*endpoint, i| addresses[i] = endpoint.address.slice();
    const n = route.endpoints_len;
    const r = routeIndex(route);
    for (candidates[0..n], 0..) |*c, i| c.recent = recent.count(r, i);
    const warm = sent.warmSet(r, n, key, route.cached_prefixes);
    const chosen = pick.affinity(candidates[0..n], key, addresses[0..n], warm, route.load_bound_pct, memo.Recent.window(n)) orelse return continue_;
    choose(cfg, route, chosen, context_id);
    sent.record(r, chosen, key, route.cached_prefixes);
    recent.record(r, n, chosen);
    return continue_;
}

/// Whether this stream is a try in a cluster's upstream filters: it has its host already, where
/// the edge chain's request callbacks run before the router chose one.
fn upstream() bool {
    return host.getProperty(upstream_address_property) != null;
}

fn rng() std.Random {
    if (prng == null) {
        var seed: [8]u8 = undefined;
        std.crypto.random.bytes(&seed);
        prng = std.Random.DefaultPrng.init(std.mem.readInt(u64, &seed, .little));
    }
    return prng.?.random();
}

fn keyOf(address: []const u8) Key {
    assert(address.len <= config.address_len_max);
    var key: Key = .{};
    key.print("{s}{s}", .{ key_prefix, address });
    return key;
}

fn read(address: []const u8) report.Seen {
    const key = keyOf(address);
    return switch (host.getSharedData(key.slice())) {
        .found => |found| report.Seen.decode(found.value) orelse .{},
        .not_found, .failed => .{},
    };
}

fn readAll(route: *const config.Route, now_ms: u64, seen: *[config.endpoints_max]report.Seen, candidates: *[config.endpoints_max]pick.Candidate) void {
    const local = &in_flight[routeIndex(route)];
    for (route.endpointSlice(), 0..) |*endpoint, i| {
        seen[i] = read(endpoint.address.slice());
        candidates[i] = .{
            .score = pick.combined(seen[i].score(now_ms, route.max_age_ms), local[i]),
            .cooling = seen[i].cooling(now_ms),
        };
    }
}

fn routeIndex(route: *const config.Route) usize {
    const cfg = activeConfig().?;
    const index = (@intFromPtr(route) - @intFromPtr(&cfg.routes[0])) / @sizeOf(config.Route);
    assert(index < cfg.routes_len);
    return index;
}

fn allFull(route: *const config.Route, seen: []const report.Seen, now_ms: u64) bool {
    assert(seen.len == route.endpoints_len and seen.len > 0);
    for (route.endpointSlice(), seen) |*endpoint, s| {
        if (!s.full(endpoint.threshold, now_ms, route.max_age_ms)) return false;
    }
    return true;
}

fn choose(cfg: *const config.Config, route: *const config.Route, index: usize, context_id: u32) void {
    assert(index < route.endpoints_len);
    _ = host.replaceHeader(.request_headers, cfg.endpoint_header.slice(), route.endpoints[index].address.slice());
    if (picked_counter) |id| host.incrementMetric(id, 1);
    const slot = &pending[context_id % pending_max];
    if (slot.context_id != 0) release(slot); // a stream this old is past counting
    const r = routeIndex(route);
    slot.* = .{ .context_id = context_id, .route = @intCast(r), .endpoint = @intCast(index) };
    in_flight[r][index] +|= 1;
}

fn release(slot: *Pending) void {
    assert(slot.context_id != 0);
    in_flight[slot.route][slot.endpoint] -|= 1;
    slot.* = .{};
}

export fn proxy_on_delete(context_id: u32) void {
    const slot = &pending[context_id % pending_max];
    if (slot.context_id == context_id) release(slot);
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
    const status = host.sendLocalResponse(429, response_details, shed_body, headers, host.grpc_status_none);
    if (status != .ok) host.logf(.err, "picker: send_local_response failed: {d}", .{@intFromEnum(status)});
    return pause;
}

export fn proxy_on_response_headers(context_id: u32, num_headers: u32, end_of_stream: u32) u32 {
    _ = context_id;
    _ = num_headers;
    _ = end_of_stream;
    host.beginCallback();
    const cfg = activeConfig() orelse return continue_;
    if (cfg.routes_len == 0) return continue_;
    const address = host.getProperty(upstream_address_property) orelse return continue_;
    if (address.len > config.address_len_max or !cfg.knows(address)) return continue_;
    const load = if (host.getHeader(.response_headers, orca_header)) |text| report.load(text) else null;
    const status = host.getHeader(.response_headers, ":status") orelse "";
    const cooldown_s: ?u32 = if (std.mem.eql(u8, status, "429"))
        report.retryAfterSeconds(host.getHeader(.response_headers, "retry-after") orelse "", cooldown_s_max)
    else
        null;
    if (load == null and cooldown_s == null) return continue_;
    const now_ms = host.nowNanos() / std.time.ns_per_ms;
    var seen = read(address);
    if (load) |l| {
        seen.load = l;
        seen.at_ms = now_ms;
    }
    if (cooldown_s) |s| {
        seen.cooldown_until_ms = now_ms + @as(u64, s) * std.time.ms_per_s;
        if (cooldown_counter) |id| host.incrementMetric(id, 1);
    }
    var buffer: [report.Seen.encoded_len]u8 = undefined;
    // Last writer wins: every report is a fresh reading of the same replica.
    const key = keyOf(address);
    _ = host.setSharedData(key.slice(), seen.encode(&buffer), 0);
    return continue_;
}
