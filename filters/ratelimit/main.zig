//! sluice `ratelimit`: a proxy-wasm (ABI 0.2.1) HTTP filter enforcing token-bucket policies whose
//! buckets are shared by all Envoy worker threads through proxy-wasm shared data.
//!
//! Exports only what it needs, each export being a VM crossing per stream (or per VM):
//!   proxy_abi_version_0_2_1, proxy_on_memory_allocate,
//!   proxy_on_vm_start (once per VM: creates the slot table and the filter-wide metrics),
//!   proxy_on_configure (once per plugin configuration),
//!   proxy_on_request_headers (decide), proxy_on_response_headers (RateLimit on admitted replies).
//! No proxy_on_context_create/done/delete: per-stream state lives in streams.zig.
//!
//! Configuration: the latest valid configuration of the VM applies to the next request (a
//! configuration update creates a new root context in the same VM). An invalid one is refused
//! (proxy_on_configure returns false, reason logged at error level) and the previous one stays.
//! Consequently two filter instances with different configurations must not share a VM: give
//! each its own vm_config.vm_id (buckets are per vm_id too).
//!
//! Per request, for every policy whose `routes` contain the route (or that has none):
//!   enforcing policies first, in configuration order: check-and-spend with compare-and-swap
//!   (limiter.zig). The first one over limit rejects the request; tokens already taken from the
//!   earlier ones are refunded, the later ones are not evaluated. So tokens are spent only when
//!   all enforcing policies admit.
//!   then, if admitted, shadow policies: evaluated and spent exactly as if enforcing, but only
//!   counted (shadow_limited), never rejecting, never visible in response headers.
const std = @import("std");
const assert = std.debug.assert;
const abi = @import("abi");
const host = abi.host;
const config = @import("config.zig");
const gcra = @import("gcra.zig");
const key = @import("key.zig");
const limiter = @import("limiter.zig");
const response = @import("response.zig");
const secret = @import("secret.zig");
const slots = @import("slots.zig");
const streams = @import("streams.zig");

pub const panic = abi.panic;

export fn proxy_abi_version_0_2_1() void {}

export fn proxy_on_memory_allocate(size: usize) ?[*]u8 {
    return host.allocate(size);
}

const route_name_property = "xds\x00route_name";
const response_details = "sluice_rate_limited";

// ---------------------------------------------------------------------------------------------
// Metrics. Envoy stores them as "wasmcustom.<name>" and prints them without that prefix.

pub const metric_prefix = "sluice_ratelimit";

const PolicyMetrics = struct {
    requests: u32 = 0,
    allowed: u32 = 0,
    limited: u32 = 0,
    shadow_limited: u32 = 0,
};

const FilterMetrics = struct {
    slot_evictions: u32 = 0,
    cas_exhausted: u32 = 0,
    store_errors: u32 = 0,
};

const metric_name_len_max = metric_prefix.len + 1 + config.policy_name_len_max + 1 + "shadow_limited".len;

fn defineCounter(comptime fmt: []const u8, args: anytype) u32 {
    var buffer: [metric_name_len_max]u8 = undefined;
    const name = std.fmt.bufPrint(&buffer, fmt, args) catch unreachable;
    return host.defineMetric(.counter, name) orelse blk: {
        host.logf(.err, "ratelimit: could not define metric {s}", .{name});
        break :blk 0;
    };
}

fn definePolicyMetrics(policy_name: []const u8) PolicyMetrics {
    return .{
        .requests = defineCounter(metric_prefix ++ ".{s}.requests", .{policy_name}),
        .allowed = defineCounter(metric_prefix ++ ".{s}.allowed", .{policy_name}),
        .limited = defineCounter(metric_prefix ++ ".{s}.limited", .{policy_name}),
        .shadow_limited = defineCounter(metric_prefix ++ ".{s}.shadow_limited", .{policy_name}),
    };
}

/// The metric ids of a policy of the active configuration with this name (an update usually
/// keeps the policies: no need to define their metrics again).
fn reusedPolicyMetrics(policy_name: []const u8) ?PolicyMetrics {
    const cfg = activeConfig() orelse return null;
    for (cfg.policySlice(), 0..) |*policy, i| {
        if (std.mem.eql(u8, policy.name.slice(), policy_name)) return configs_metrics[active_index][i];
    }
    return null;
}

fn count(metric_id: u32) void {
    host.incrementMetric(metric_id, 1);
}

// ---------------------------------------------------------------------------------------------
// State of this VM (one per worker thread). All statically allocated.

/// Two configurations: the active one and the one being parsed, swapped on success.
var configs: [2]config.Config = undefined;
var configs_metrics: [2][config.policies_max]PolicyMetrics = undefined;
var active_index: u1 = 0;
var configured = false;
/// Bumped by every accepted configuration; per-stream entries of an older one are ignored.
var generation: u32 = 0;
var parse_work: [config.work_bytes]u8 = undefined;
var filter_metrics: FilterMetrics = .{};
var stream_table: streams.Table = .{};

fn activeConfig() ?*const config.Config {
    if (!configured) return null;
    return &configs[active_index];
}

/// The proxy-wasm shared data as the limiter's store.
const SharedStore = struct {
    pub fn get(_: SharedStore, k: []const u8) limiter.StoreGet {
        return switch (host.getSharedData(k)) {
            .found => |f| .{ .found = .{ .value = f.value, .cas = f.cas } },
            .not_found => .not_found,
            .failed => .failed,
        };
    }
    pub fn set(_: SharedStore, k: []const u8, value: []const u8, cas: u32) limiter.StoreSet {
        return switch (host.setSharedData(k, value, cas)) {
            .ok => .ok,
            .cas_mismatch => .cas_mismatch,
            else => .failed,
        };
    }
};

var hash_secret: key.Secret = undefined;
var hash_secret_from: enum { nowhere, this_vm, shared_data } = .nowhere;
var hash_secret_failures: u64 = 0;

/// The secret bucket hashes are keyed with, shared by every VM of this Envoy (secret.zig). If
/// shared data fails, this VM uses a random secret of its own meanwhile (its clients' buckets
/// are apart from other workers' until then) and asks again on the next request.
fn hashSecret() *const key.Secret {
    if (hash_secret_from != .shared_data) {
        if (hash_secret_from == .nowhere) {
            std.crypto.random.bytes(&hash_secret);
            hash_secret_from = .this_vm;
        }
        if (secret.loadOrCreate(SharedStore{}, &hash_secret)) |shared| {
            hash_secret = shared;
            hash_secret_from = .shared_data;
        } else |_| {
            logSparse(&hash_secret_failures, "ratelimit: could not read or create the hashing secret in shared data", .{});
        }
    }
    return &hash_secret;
}

/// Logs 1st, 2nd, 4th, 8th... occurrence only, so a persistent fault cannot flood the log.
fn logSparse(counter: *u64, comptime fmt: []const u8, args: anytype) void {
    counter.* += 1;
    if (std.math.isPowerOfTwo(counter.*)) host.logf(.warn, fmt ++ " (occurrence {d})", args ++ .{counter.*});
}
var store_error_count: u64 = 0;
var repaired_count: u64 = 0;

// ---------------------------------------------------------------------------------------------
// VM and configuration.

export fn proxy_on_vm_start(root_context_id: u32, vm_configuration_size: u32) u32 {
    _ = root_context_id;
    _ = vm_configuration_size;
    host.beginCallback();
    filter_metrics = .{
        .slot_evictions = defineCounter(metric_prefix ++ ".slot_evictions", .{}),
        .cas_exhausted = defineCounter(metric_prefix ++ ".cas_exhausted", .{}),
        .store_errors = defineCounter(metric_prefix ++ ".store_errors", .{}),
    };
    _ = hashSecret();
    const created = limiter.createSets(SharedStore{}) catch {
        host.log(.err, "ratelimit: could not create the slot table in shared data");
        return 1; // requests will create their sets on first use
    };
    if (created > 0) {
        host.logf(.info, "ratelimit: created {d} slot sets ({d} slots, {d} bytes of shared data)", .{ created, slots.slot_count, slots.payload_bytes_max });
    }
    return 1;
}

export fn proxy_on_configure(root_context_id: u32, plugin_configuration_size: u32) u32 {
    _ = root_context_id;
    host.beginCallback();
    if (plugin_configuration_size > config.config_bytes_max) {
        host.logf(.err, "ratelimit: rejected plugin configuration: {d} bytes, more than {d}", .{ plugin_configuration_size, config.config_bytes_max });
        return 0;
    }
    const json = host.getPluginConfiguration(plugin_configuration_size) orelse {
        host.log(.err, "ratelimit: rejected plugin configuration: could not read it");
        return 0;
    };
    const next: u1 = if (configured) ~active_index else active_index;
    var message: config.Message = .{};
    if (!config.parse(json, &configs[next], &parse_work, &message)) {
        host.logf(.err, "ratelimit: rejected plugin configuration: {s}", .{message.slice()});
        return 0;
    }
    const next_config = &configs[next];
    for (next_config.policySlice(), 0..) |*policy, i| {
        configs_metrics[next][i] = reusedPolicyMetrics(policy.name.slice()) orelse
            definePolicyMetrics(policy.name.slice());
    }
    active_index = next;
    configured = true;
    generation +%= 1;
    host.logf(.info, "ratelimit: configured {d} policies, xff_trusted_hops={d}", .{ next_config.policies_len, next_config.xff_trusted_hops });
    return 1;
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// Request attributes fetched at most once per request, on first use.
const RequestFacts = struct {
    route: []const u8,
    trusted_hops: u32,
    client: ?abi.client.ClientIp = null,
    headers: [header_cache_capacity]CachedHeader = undefined,
    headers_len: u32 = 0,

    const header_cache_capacity = 8;
    const CachedHeader = struct { name: []const u8, value: []const u8 };

    fn clientIp(self: *RequestFacts) *const abi.client.ClientIp {
        if (self.client == null) self.client = abi.client.clientIp(self.trusted_hops);
        return &self.client.?;
    }

    /// Missing header → empty value.
    fn header(self: *RequestFacts, name: []const u8) []const u8 {
        for (self.headers[0..self.headers_len]) |h| {
            if (h.name.ptr == name.ptr or std.mem.eql(u8, h.name, name)) return h.value;
        }
        const value = host.getHeader(.request_headers, name) orelse "";
        if (self.headers_len < header_cache_capacity) {
            self.headers[self.headers_len] = .{ .name = name, .value = value };
            self.headers_len += 1;
        }
        return value;
    }
};

fn bucketHash(policy: *const config.Policy, facts: *RequestFacts) u64 {
    var hasher = key.Hasher.init(hashSecret(), policy.name.slice());
    for (policy.descriptorSlice()) |*descriptor| {
        switch (descriptor.kind) {
            .client_ip => hasher.descriptor(.client_ip, &facts.clientIp().address.v6Prefix(policy.ipv6_prefix_len).bytes),
            .header => hasher.descriptor(.header, facts.header(descriptor.header.slice())),
            .route => hasher.descriptor(.route, facts.route),
        }
    }
    return hasher.final();
}

/// Cost header (valid integer, clamped to burst) > route_costs entry > 1.
fn requestCost(policy: *const config.Policy, facts: *RequestFacts) u32 {
    if (policy.cost_header.len > 0) {
        // Missing reads as "", which is not a valid cost either.
        if (response.parseCost(facts.header(policy.cost_header.slice()), policy.limit.burst)) |cost| return cost;
    }
    if (policy.routeCost(facts.route)) |cost| return cost;
    return 1;
}

const Spent = struct { policy: u8, hash: u64, cost: u32 };

const Rejection = struct { policy: u8, retry_after_s: u64 };

export fn proxy_on_request_headers(context_id: u32, num_headers: u32, end_of_stream: u32) u32 {
    _ = num_headers;
    _ = end_of_stream;
    host.beginCallback();
    const cfg = activeConfig() orelse return @intFromEnum(host.Action.@"continue");
    if (cfg.policies_len == 0) return @intFromEnum(host.Action.@"continue");
    const metrics = &configs_metrics[active_index];

    var facts: RequestFacts = .{
        .route = if (cfg.needs_route) (host.getProperty(route_name_property) orelse "") else "",
        .trusted_hops = cfg.xff_trusted_hops,
    };

    var matched: [config.policies_max]u8 = undefined;
    var matched_len: u32 = 0;
    for (cfg.policySlice(), 0..) |*policy, i| {
        if (!policy.appliesTo(facts.route)) continue;
        matched[matched_len] = @intCast(i);
        matched_len += 1;
        count(metrics[i].requests);
    }
    if (matched_len == 0) return @intFromEnum(host.Action.@"continue");

    const now = host.nowNanos();
    var spent: [config.policies_max]Spent = undefined;
    var spent_len: u32 = 0;
    var rejection: ?Rejection = null;
    // The enforcing policy with the fewest tokens left: reported in the RateLimit header.
    var binding: ?streams.Entry = null;

    for (matched[0..matched_len]) |index| {
        const policy = &cfg.policies[index];
        if (policy.shadow) continue;
        const hash = bucketHash(policy, &facts);
        const cost = requestCost(policy, &facts);
        const outcome = acquire(hash, now, cost, policy.limit) orelse {
            // Contended beyond the retry bound: fail closed.
            rejection = .{ .policy = index, .retry_after_s = 1 };
            break;
        };
        const decision = (outcome orelse continue).decision; // store failure: fail open
        if (!decision.admit) {
            rejection = .{ .policy = index, .retry_after_s = decision.reset_s };
            break;
        }
        spent[spent_len] = .{ .policy = index, .hash = hash, .cost = cost };
        spent_len += 1;
        if (binding == null or decision.remaining < binding.?.remaining) {
            binding = .{
                .context_id = context_id,
                .generation = generation,
                .policy = index,
                .remaining = decision.remaining,
                .reset_s = @intCast(@min(decision.reset_s, std.math.maxInt(u32))),
            };
        }
    }

    if (rejection) |r| {
        for (spent[0..spent_len]) |s| limiter.refund(SharedStore{}, s.hash, s.cost, cfg.policies[s.policy].limit);
        count(metrics[r.policy].limited);
        sendRejection(&cfg.policies[r.policy], r.retry_after_s);
        return @intFromEnum(host.Action.pause);
    }

    for (spent[0..spent_len]) |s| count(metrics[s.policy].allowed);
    for (matched[0..matched_len]) |index| {
        const policy = &cfg.policies[index];
        if (!policy.shadow) continue;
        const hash = bucketHash(policy, &facts);
        const cost = requestCost(policy, &facts);
        const outcome = acquire(hash, now, cost, policy.limit) orelse {
            count(metrics[index].shadow_limited);
            continue;
        };
        const decision = (outcome orelse continue).decision;
        count(if (decision.admit) metrics[index].allowed else metrics[index].shadow_limited);
    }

    if (binding) |entry| stream_table.put(entry);
    return @intFromEnum(host.Action.@"continue");
}

/// null: contended (retry bound reached). ?null: store failure (logged).
fn acquire(hash: u64, now: u64, cost: u32, limit: gcra.Limit) ??limiter.Outcome {
    const outcome = limiter.acquire(SharedStore{}, hash, now, cost, limit) catch |err| switch (err) {
        error.Contended => {
            count(filter_metrics.cas_exhausted);
            return null;
        },
        error.StoreFailed => {
            count(filter_metrics.store_errors);
            logSparse(&store_error_count, "ratelimit: shared data failure, request admitted", .{});
            return @as(?limiter.Outcome, null);
        },
    };
    if (outcome.evicted_live) count(filter_metrics.slot_evictions);
    if (outcome.repaired) logSparse(&repaired_count, "ratelimit: reset a malformed slot set", .{});
    return outcome;
}

fn sendRejection(policy: *const config.Policy, retry_after_s: u64) void {
    const name = policy.name.slice();
    var retry_buffer: [20]u8 = undefined;
    var policy_buffer: [response.value_len_max]u8 = undefined;
    var limit_buffer: [response.value_len_max]u8 = undefined;
    var body_buffer: [response.value_len_max]u8 = undefined;
    const grpc = if (host.getHeader(.request_headers, "content-type")) |ct| response.isGrpc(ct) else false;
    const retry = response.decimal(&retry_buffer, retry_after_s);
    const policy_value = response.policyValue(&policy_buffer, name, policy.limit.burst, policy.limit.windowSeconds());
    const limit_value = response.limitValue(&limit_buffer, name, 0, retry_after_s);

    const json_headers = [_]abi.pairs.Pair{
        .{ .name = "retry-after", .value = retry },
        .{ .name = "ratelimit-policy", .value = policy_value },
        .{ .name = "ratelimit", .value = limit_value },
        .{ .name = "content-type", .value = "application/json" },
    };
    // gRPC: Envoy writes the grpc-status/grpc-message trailers-only reply and its content-type.
    const header_list: []const abi.pairs.Pair = if (grpc) json_headers[0..3] else json_headers[0..];
    var headers_buffer: [1024]u8 = undefined;
    const headers = abi.pairs.encode(&headers_buffer, header_list) orelse unreachable;
    const body = if (grpc)
        response.grpcMessage(&body_buffer, name, retry_after_s)
    else
        response.body(&body_buffer, name, retry_after_s);
    const grpc_status = if (grpc) host.grpc_status_resource_exhausted else host.grpc_status_none;
    const status = host.sendLocalResponse(429, response_details, body, headers, grpc_status);
    if (status != .ok) host.logf(.err, "ratelimit: send_local_response failed: {d}", .{@intFromEnum(status)});
}

export fn proxy_on_response_headers(context_id: u32, num_headers: u32, end_of_stream: u32) u32 {
    _ = num_headers;
    _ = end_of_stream;
    host.beginCallback();
    const entry = stream_table.take(context_id) orelse return @intFromEnum(host.Action.@"continue");
    const cfg = activeConfig() orelse return @intFromEnum(host.Action.@"continue");
    if (entry.generation != generation) return @intFromEnum(host.Action.@"continue");
    assert(entry.policy < cfg.policies_len);
    const policy = &cfg.policies[entry.policy];
    var limit_buffer: [response.value_len_max]u8 = undefined;
    // Only RateLimit: RateLimit-Policy is static (sent with every 429), and each header added is
    // a host call (~0.5 us in Envoy) on every admitted request.
    _ = host.addHeader(.response_headers, "ratelimit", response.limitValue(&limit_buffer, policy.name.slice(), entry.remaining, entry.reset_s));
    return @intFromEnum(host.Action.@"continue");
}

comptime {
    // Bounds of the static state (bytes of wasm linear memory per VM).
    assert(@sizeOf(@TypeOf(configs)) < 256 * 1024);
    assert(@sizeOf(streams.Table) <= 32 * 1024);
}
