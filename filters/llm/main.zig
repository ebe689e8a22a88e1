//! sluice `llm`: a proxy-wasm (ABI 0.2.1) HTTP filter that routes OpenAI requests on the `model`
//! field of their body, inside Envoy, with no hop to another process.
//!
//! On a POST to an entry route (config.zig), headers are held and the body buffered by Envoy (up
//! to `max_body_bytes`; the route's request_body_buffer_limit lets Envoy hold that much). When
//! the body has arrived, it is read in bounded pieces (body.zig); bad input is answered here in
//! OpenAI's error shape and nothing is forwarded: not JSON, no `model`, `model` not a string,
//! an unknown model (404), `max_tokens` not a positive integer, a body over the limit (413).
//! Otherwise a target is drawn by weight, `x-sluice-model: <Model>/<backend>` is set (Envoy
//! then matches the routes again: with ABI 0.2.x a header change clears the route cache, and
//! the model routes match that header), and the model name is rewritten in the body if the
//! target says so (Content-Length follows).
//!
//! API keys: on routes that need one (`auth_routes`), the SHA-256 of the Bearer key must be
//! one of the configured keys' (else 401, in OpenAI's shape); its tenant goes upstream in
//! `x-sluice-tenant` (replacing anything the client sent), and the key's priority, when it has
//! one, in `x-sluice-priority` (likewise: the picker, after this filter, sheds on it).
//!
//! Token budgets (budget.zig): a request of a tenant with budgets reserves its estimate in each,
//! atomically across workers, or gets a 429 with Retry-After and RateLimit headers counted in
//! tokens; when the answer ends, the real `usage.total_tokens` (from the JSON answer, or the
//! last SSE event, which the edge asks for with `stream_options.include_usage` and removes
//! again if the client did not ask) replaces the reservation. A stream that ends without usage
//! (the client went away) is charged its prompt estimate plus one token per event seen, and the
//! rest refunded at once. Streams pass through: each chunk is scanned as it goes.
//!
//! A stream's end (ending.zig): the filter asks the backend to end the stream by closing its
//! connection (`x-sluice-stream-framing: close`), which Envoy's HTTP/1 codec takes as the end of
//! the response even when the backend dies, where a chunked stream would be reset instead. A
//! chat completions or completions stream that ends without `data: [DONE]` gets an error event
//! and `[DONE]` appended.
//!
//! Exports: configure, request headers and body, response headers and body, log (end of stream).
const std = @import("std");
const assert = std.debug.assert;
const abi = @import("abi");
const host = abi.host;
const body = @import("body.zig");
const budget = @import("budget.zig");
const config = @import("config.zig");
const ending = @import("ending.zig");
const openai = @import("openai.zig");
const streams = @import("streams.zig");
const telemetry = @import("telemetry.zig");

pub const panic = abi.panic;

export fn proxy_abi_version_0_2_1() void {}

export fn proxy_on_memory_allocate(size: usize) ?[*]u8 {
    return host.allocate(size);
}

const route_name_property = "xds\x00route_name";
const model_header = "x-sluice-model";
/// The tenant of the request's API key, for the backend and the limits.
const tenant_header = "x-sluice-tenant";
/// The priority the picker sheds on and the generative backend schedules on.
const priority_header = "x-sluice-priority";
/// Asks the generative backend to delimit a stream by closing the connection (no chunked
/// encoding), so that its end reaches this filter even when the backend dies mid-way.
const framing_header = "x-sluice-stream-framing";
/// Bytes of body read per host call: well within the scratch arena, which is reset between pieces.
const piece_bytes = 64 * 1024;
/// The most bytes between a `"model"` key and its value's closing quote that a rewrite reads.
const model_window_max = 16 * 1024;

// State of this VM (one per worker thread). All statically allocated.
var configs: [2]config.Config = undefined;
var active_index: u1 = 0;
var configured = false;
var parse_work: [config.work_bytes]u8 = undefined;
var reader: body.Reader = undefined;
var prng: ?std.Random.DefaultPrng = null;
/// Bumped by every accepted configuration; per-stream entries of an older one are not reconciled.
var generation: u32 = 0;
var stream_table: streams.Table = .{};
/// A response chunk being rewritten (the usage event removed).
var chunk_copy: [piece_bytes]u8 = undefined;

fn activeConfig() ?*const config.Config {
    if (!configured) return null;
    return &configs[active_index];
}

export fn proxy_on_configure(root_context_id: u32, plugin_configuration_size: u32) u32 {
    _ = root_context_id;
    host.beginCallback();
    if (plugin_configuration_size > config.config_bytes_max) {
        host.logf(.err, "llm: rejected plugin configuration: {d} bytes, more than {d}", .{ plugin_configuration_size, config.config_bytes_max });
        return 0;
    }
    const json = host.getPluginConfiguration(plugin_configuration_size) orelse {
        host.log(.err, "llm: rejected plugin configuration: could not read it");
        return 0;
    };
    const next: u1 = if (configured) ~active_index else active_index;
    var message: config.Message = .{};
    if (!config.parse(json, &configs[next], &parse_work, &message)) {
        host.logf(.err, "llm: rejected plugin configuration: {s}", .{message.slice()});
        return 0;
    }
    active_index = next;
    configured = true;
    generation +%= 1;
    for (configs[next].budgets[0..configs[next].budgets_len]) |*b| createCounter(b.name.slice());
    host.logf(.info, "llm: configured {d} entry routes, {d} models", .{ configs[next].routes_len, configs[next].models_len });
    return 1;
}

const continue_ = @intFromEnum(host.Action.@"continue");
const pause = @intFromEnum(host.Action.pause);

/// Whether the request is a POST to an entry route: one this filter routes.
fn isEntryPost(cfg: *const config.Config, route: []const u8) bool {
    if (!cfg.isEntry(route)) return false;
    const method = host.getHeader(.request_headers, ":method") orelse return false;
    return std.mem.eql(u8, method, "POST");
}

export fn proxy_on_request_headers(context_id: u32, num_headers: u32, end_of_stream: u32) u32 {
    _ = context_id;
    _ = num_headers;
    host.beginCallback();
    const cfg = activeConfig() orelse return continue_;
    if (cfg.routes_len == 0 and cfg.auth_routes_len == 0) return continue_;
    const route = host.getProperty(route_name_property) orelse return continue_;
    if (cfg.needsKey(route)) {
        const key = authenticate(cfg) orelse return pause;
        _ = host.replaceHeader(.request_headers, tenant_header, key.tenant.slice());
        if (key.priority) |priority| {
            var digits: [8]u8 = undefined;
            _ = host.replaceHeader(.request_headers, priority_header, std.fmt.bufPrint(&digits, "{d}", .{priority}) catch unreachable);
        }
    }
    if (!isEntryPost(cfg, route)) {
        // Only this filter may choose a model route.
        if (cfg.isEntry(route)) _ = host.removeHeader(.request_headers, model_header);
        return continue_;
    }
    if (end_of_stream != 0) {
        return reply(.{ .status = 400, .message = "The request has no body: a JSON object naming a model is required." });
    }
    if (host.getHeader(.request_headers, "content-length")) |text| {
        const length = std.fmt.parseInt(u64, text, 10) catch 0;
        if (length > cfg.max_body_bytes) return tooLarge(cfg, length);
    }
    return pause;
}

/// The key the request carries (`Authorization: Bearer <key>`); null when it carries none or an
/// unknown one, after answering 401. The key is never logged or echoed.
fn authenticate(cfg: *const config.Config) ?*const config.Key {
    const scheme = "bearer ";
    const value = host.getHeader(.request_headers, "authorization") orelse "";
    if (value.len <= scheme.len or !std.ascii.startsWithIgnoreCase(value, scheme)) {
        _ = reply(.{ .status = 401, .type = "invalid_request_error", .message = "You didn't provide an API key. " ++
            "You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)." });
        return null;
    }
    var digest: config.Digest = undefined;
    std.crypto.hash.sha2.Sha256.hash(std.mem.trim(u8, value[scheme.len..], " "), &digest, .{});
    return cfg.keyOf(&digest) orelse {
        _ = reply(.{ .status = 401, .message = "Incorrect API key provided.", .code = "invalid_api_key" });
        return null;
    };
}

export fn proxy_on_request_body(context_id: u32, body_buffer_length: u32, end_of_stream: u32) u32 {
    host.beginCallback();
    const cfg = activeConfig() orelse return continue_;
    if (cfg.routes_len == 0) return continue_;
    const route = host.getProperty(route_name_property) orelse return continue_;
    if (!isEntryPost(cfg, route)) return continue_;
    if (body_buffer_length > cfg.max_body_bytes) return tooLarge(cfg, body_buffer_length);
    if (end_of_stream == 0) return pause;

    // The route is read again after the pieces: reading them resets the scratch arena.
    var service: abi.BoundedString(config.service_len_max) = .{};
    service.set(route[0..std.mem.indexOfScalar(u8, route, '/').?]);
    const fields = switch (readBody(body_buffer_length)) {
        .fields => |f| f,
        .failure => |failure| return reply(switch (failure) {
            .not_json => .{ .status = 400, .message = "We could not parse the JSON body of your request." },
            .not_object => .{ .status = 400, .message = "The request body must be a JSON object." },
            .too_deep => .{ .status = 400, .message = "The request body nests deeper than the edge reads." },
        }),
    };
    host.beginCallback();
    const model = switch (fields.model) {
        .absent => return reply(.{ .status = 400, .message = "you must provide a model parameter", .param = "model" }),
        .not_string => return reply(.{ .status = 400, .message = "Invalid type for 'model': expected a string.", .param = "model", .code = "invalid_type" }),
        .too_long => return reply(unknownModel("(too long)")),
        .string => |s| s,
    };
    if (fields.max_tokens == .invalid) {
        return reply(.{ .status = 400, .message = "Invalid 'max_tokens': expected a positive integer.", .param = "max_tokens", .code = "invalid_value" });
    }
    const found = cfg.find(service.slice(), model.value.slice()) orelse return reply(unknownModel(model.value.slice()));
    var entry: streams.Entry = .{ .context_id = context_id, .generation = generation, .stream = fields.stream, .start_ns = host.nowNanos() };
    // Set by this filter when keys are checked; without keys a client's header is not trusted.
    const tenant = if (cfg.auth_routes_len > 0) host.getHeader(.request_headers, tenant_header) orelse "" else "";
    if (cfg.budgets_len > 0) {
        const max_tokens: ?u64 = if (fields.max_tokens == .value) fields.max_tokens.value else null;
        if (!admit(cfg, tenant, found.name.slice(), body_buffer_length, max_tokens, &entry)) return pause;
    }
    const target = found.pick(draw(found.weight_total));
    const header = target.header.slice();
    entry.series = telemetry.seriesOf(tenant, found.name.slice(), header[std.mem.indexOfScalar(u8, header, '/').? + 1 ..]);
    _ = host.replaceHeader(.request_headers, model_header, target.header.slice());
    var length: u64 = body_buffer_length;
    const rewrite = target.rewrite.slice();
    if (rewrite.len > 0 and !std.mem.eql(u8, rewrite, model.value.slice())) {
        length = rewriteModel(model.start_hint, model.end, rewrite, length) orelse
            return refuseAfterReserving(&entry, .{ .status = 400, .message = "The request's model field could not be rewritten.", .param = "model" });
    }
    // Usage in every stream, for the budgets and the token counters; removed again on the way back.
    if (fields.stream and !fields.stream_options) {
        const insertion = "\"stream_options\":{\"include_usage\":true},";
        length = replaceFront(fields.after_brace, fields.after_brace, insertion, length) orelse
            return refuseAfterReserving(&entry, .{ .status = 400, .message = "The request's stream options could not be set." });
        entry.injected = true;
    }
    entry.ends_with_done = fields.stream and ending.endsWithDone(host.getHeader(.request_headers, ":path") orelse "");
    if (entry.ends_with_done) _ = host.replaceHeader(.request_headers, framing_header, "close");
    if (length != body_buffer_length and host.getHeader(.request_headers, "content-length") != null) {
        var digits: [20]u8 = undefined;
        _ = host.replaceHeader(.request_headers, "content-length", std.fmt.bufPrint(&digits, "{d}", .{length}) catch unreachable);
    }
    if (entry.series) |index| telemetry.started(index);
    if (stream_table.put(entry)) |displaced| {
        if (displaced.series) |index| telemetry.abandoned(index);
    }
    return continue_;
}

/// Reserves the request's estimate in every budget of its tenant (and model); false after
/// answering 429 when one refuses (the reservations already made are returned).
fn admit(cfg: *const config.Config, tenant: []const u8, model: []const u8, body_bytes: u64, max_tokens: ?u64, entry: *streams.Entry) bool {
    const now_s = host.nowNanos() / std.time.ns_per_s;
    for (cfg.budgets[0..cfg.budgets_len], 0..) |*b, i| {
        if (!b.appliesTo(tenant, model)) continue;
        if (entry.reservations_len == streams.budgets_per_request_max) break;
        const tokens = budget.estimate(body_bytes, max_tokens orelse b.default_max_tokens);
        entry.prompt_estimate = budget.estimate(body_bytes, 0);
        var key: [counter_key_max]u8 = undefined;
        const decision = budget.reserveIn(SharedStore{}, counterKey(&key, b.name.slice()), b.windowAt(now_s), b.limit(), tokens, b.shadow) catch |err| switch (err) {
            // Shared data failing: admit without counting rather than refuse everyone.
            error.StoreFailed => continue,
            error.Contended => budget.Decision{ .admit = false, .used = b.limit(), .window = b.windowAt(now_s) },
        };
        if (!decision.admit and !b.shadow) {
            refund(cfg, entry);
            _ = sendBudgetRefusal(b, now_s, decision.used);
            return false;
        }
        entry.reservations[entry.reservations_len] = .{ .budget = @intCast(i), .window = decision.window, .tokens = tokens };
        entry.reservations_len += 1;
        if (b.soft_limit_percent > 0 and entry.soft == null and b.usedOverall(decision.used) * 100 >= b.tokens * b.soft_limit_percent) {
            entry.soft = @intCast(i);
        }
    }
    return true;
}

fn refuseAfterReserving(entry: *streams.Entry, e: openai.Error) u32 {
    if (activeConfig()) |cfg| refund(cfg, entry);
    return reply(e);
}

/// Replaces every reservation of `entry` with `used` tokens in all (0: a full refund).
fn reconcile(cfg: *const config.Config, entry: *const streams.Entry, used: u64) void {
    for (entry.reservationSlice()) |r| {
        var key: [counter_key_max]u8 = undefined;
        const delta = @as(i64, @intCast(used)) - @as(i64, @intCast(r.tokens));
        budget.adjust(SharedStore{}, counterKey(&key, cfg.budgets[r.budget].name.slice()), r.window, delta) catch {
            host.log(.warn, "llm: a token budget could not be reconciled (shared data)");
        };
    }
}

fn refund(cfg: *const config.Config, entry: *streams.Entry) void {
    reconcile(cfg, entry, 0);
    entry.reservations_len = 0;
}

fn sendBudgetRefusal(b: *const config.Budget, now_s: u64, used: u64) u32 {
    const reset_s = b.resetIn(now_s);
    var retry: [20]u8 = undefined;
    var policy: [160]u8 = undefined;
    var limit: [160]u8 = undefined;
    const name = b.name.slice();
    const extra = [_]abi.pairs.Pair{
        .{ .name = "retry-after", .value = std.fmt.bufPrint(&retry, "{d}", .{reset_s}) catch unreachable },
        .{ .name = "ratelimit-policy", .value = std.fmt.bufPrint(&policy, "\"{s}\";q={d};w={d}", .{ name, b.tokens, b.window_s }) catch unreachable },
        .{ .name = "ratelimit", .value = std.fmt.bufPrint(&limit, "\"{s}\";r={d};t={d}", .{ name, b.limit() -| used, reset_s }) catch unreachable },
    };
    return replyWith(.{ .status = 429, .type = "tokens", .code = "rate_limit_exceeded", .quoted = name,
        .message = "Token budget %s is used up for this window: retry after the time in Retry-After." }, &extra);
}

const counter_key_prefix = "sluice-llm-budget/";
const counter_key_max = counter_key_prefix.len + config.service_len_max;

fn counterKey(buffer: *[counter_key_max]u8, name: []const u8) []const u8 {
    return std.fmt.bufPrint(buffer, counter_key_prefix ++ "{s}", .{name}) catch unreachable;
}

/// A budget's counter, made when its configuration arrives, before its traffic (shared data has
/// no atomic create: two workers creating it under traffic could lose a reservation).
fn createCounter(name: []const u8) void {
    var key: [counter_key_max]u8 = undefined;
    const k = counterKey(&key, name);
    if (host.getSharedData(k) == .not_found) {
        _ = host.setSharedData(k, &(budget.Counter{ .window = 0, .used = 0 }).encode(), 0);
    }
}

/// The proxy-wasm shared data as the budgets' store.
const SharedStore = struct {
    pub fn get(_: SharedStore, k: []const u8) budget.StoreGet {
        return switch (host.getSharedData(k)) {
            .found => |f| .{ .found = .{ .value = f.value, .cas = f.cas } },
            .not_found => .not_found,
            .failed => .failed,
        };
    }
    pub fn set(_: SharedStore, k: []const u8, value: []const u8, cas: u32) budget.StoreSet {
        return switch (host.setSharedData(k, value, cas)) {
            .ok => .ok,
            .cas_mismatch => .cas_mismatch,
            else => .failed,
        };
    }
};

export fn proxy_on_response_headers(context_id: u32, num_headers: u32, end_of_stream: u32) u32 {
    _ = num_headers;
    _ = end_of_stream;
    host.beginCallback();
    const entry = stream_table.get(context_id) orelse return continue_;
    // Before any configuration check: the backend was asked for a close-delimited stream, whose
    // cut end only this filter can tell from a finished one.
    if (entry.ends_with_done) {
        const content_type = host.getHeader(.response_headers, "content-type") orelse "";
        entry.events_answer = std.ascii.startsWithIgnoreCase(content_type, "text/event-stream");
    }
    const cfg = activeConfig() orelse return continue_;
    if (entry.generation != generation) return continue_;
    if (entry.soft) |index| _ = host.addHeader(.response_headers, "x-sluice-budget-soft-limit", cfg.budgets[index].name.slice());
    return continue_;
}

export fn proxy_on_response_body(context_id: u32, body_buffer_length: u32, end_of_stream: u32) u32 {
    host.beginCallback();
    const entry = stream_table.get(context_id) orelse return continue_;
    var offset: u32 = 0;
    while (offset < body_buffer_length) {
        host.beginCallback();
        const piece = host.getBuffer(.http_response_body, offset, @min(piece_bytes, body_buffer_length - offset)) orelse break;
        if (piece.len == 0) break;
        entry.usage.feed(piece);
        if (entry.stream) {
            const events = std.mem.count(u8, piece, "data:");
            if (events > 0) {
                const now = host.nowNanos();
                if (entry.first_event_ns == null) entry.first_event_ns = now;
                entry.last_event_ns = now;
                entry.events += events;
            }
        }
        if (entry.events_answer) entry.ending.feed(piece);
        if (entry.injected and piece.len == body_buffer_length) stripUsage(piece);
        offset += @intCast(piece.len);
    }
    if (end_of_stream != 0 and entry.events_answer) endStream(entry);
    return continue_;
}

/// Appends the error event and `[DONE]` to a stream that ended without `[DONE]`: its backend
/// stopped part-way (the bytes it sent have reached the client once; nothing is replayed).
fn endStream(entry: *streams.Entry) void {
    const missing = entry.ending.missing();
    if (missing.len == 0) return;
    // Envoy appends what is set at or past the chunk's end (and replaces only at its start).
    if (host.setBuffer(.http_response_body, std.math.maxInt(u32), 0, missing) != .ok) {
        host.log(.warn, "llm: could not end a cut stream with its error event");
        return;
    }
    host.log(.warn, "llm: a stream ended before [DONE] (its backend stopped); appended the error event");
}

/// Removes the usage event the edge asked for on the client's behalf, when this chunk holds it.
fn stripUsage(chunk: []const u8) void {
    const event = budget.usageEvent(chunk) orelse return;
    const kept = chunk.len - (event.end - event.start);
    @memcpy(chunk_copy[0..event.start], chunk[0..event.start]);
    @memcpy(chunk_copy[event.start..kept], chunk[event.end..]);
    if (host.setBuffer(.http_response_body, 0, chunk.len, chunk_copy[0..kept]) != .ok) {
        host.log(.warn, "llm: could not remove the usage event from a stream");
    }
}

export fn proxy_on_log(context_id: u32) void {
    host.beginCallback();
    const entry = stream_table.take(context_id) orelse return;
    if (entry.series) |index| {
        telemetry.ended(index, .{
            .duration_ns = host.nowNanos() - entry.start_ns,
            .first_token_ns = if (entry.first_event_ns) |first| first - entry.start_ns else null,
            .last_event_ns = entry.last_event_ns -| entry.start_ns,
            .input_tokens = entry.usage.prompt(),
            .output_tokens = entry.usage.completion(),
        });
    }
    const cfg = activeConfig() orelse return;
    if (entry.generation != generation or entry.reservations_len == 0) return;
    const used = entry.usage.total() orelse if (entry.stream and entry.events > 0) entry.prompt_estimate + entry.events else 0;
    reconcile(cfg, &entry, used);
}

fn readBody(length: u32) body.Result {
    reader.init();
    var offset: u32 = 0;
    while (offset < length) {
        host.beginCallback();
        const piece = host.getBuffer(.http_request_body, offset, @min(piece_bytes, length - offset)) orelse
            return .{ .failure = .not_json };
        if (piece.len == 0) return .{ .failure = .not_json };
        if (reader.feed(piece)) |failure| return .{ .failure = failure };
        offset += @intCast(piece.len);
    }
    return reader.finish();
}

fn draw(total: u32) u32 {
    assert(total > 0);
    if (prng == null) {
        var seed: [8]u8 = undefined;
        std.crypto.random.bytes(&seed);
        prng = std.Random.DefaultPrng.init(std.mem.readInt(u64, &seed, .little));
    }
    return prng.?.random().uintLessThan(u32, total);
}

/// Replaces the model's JSON string, which ends at `end` and starts at the first quote after
/// `start_hint`, with `"<rewrite>"`; the body's new length, or null.
fn rewriteModel(start_hint: u64, end: u64, rewrite: []const u8, length: u64) ?u64 {
    assert(end > start_hint and end <= length);
    if (end - start_hint > model_window_max) return null;
    const window = host.getBuffer(.http_request_body, @intCast(start_hint), @intCast(end - start_hint)) orelse return null;
    const start = start_hint + (body.modelStart(window) orelse return null);
    var quoted: [config.name_len_max + 2]u8 = undefined;
    return replaceFront(start, end, std.fmt.bufPrint(&quoted, "\"{s}\"", .{rewrite}) catch unreachable, length);
}

/// Replaces the body's bytes [start, end) with `insert`; the body's new length, or null.
/// Envoy replaces body bytes only at the front (it drains a prefix and prepends), so the bytes
/// before `start` are copied into the new prefix: a heap buffer, freed before returning
/// (clients often send `messages` before `model`, so that can be most of the body).
fn replaceFront(start: u64, end: u64, insert: []const u8, length: u64) ?u64 {
    assert(start <= end and end <= length);
    const prefix = std.heap.wasm_allocator.alloc(u8, @intCast(start + insert.len)) catch return null;
    defer std.heap.wasm_allocator.free(prefix);
    var offset: usize = 0;
    while (offset < start) {
        host.beginCallback();
        const piece = host.getBuffer(.http_request_body, offset, @min(piece_bytes, start - offset)) orelse return null;
        if (piece.len == 0) return null;
        @memcpy(prefix[offset..][0..piece.len], piece);
        offset += piece.len;
    }
    @memcpy(prefix[offset..], insert);
    if (host.setBuffer(.http_request_body, 0, @intCast(end), prefix) != .ok) return null;
    return length - end + prefix.len;
}

fn unknownModel(name: []const u8) openai.Error {
    return .{ .status = 404, .message = "The model `%s` does not exist or you do not have access to it.", .quoted = name, .code = "model_not_found" };
}

fn tooLarge(cfg: *const config.Config, length: u64) u32 {
    var message: abi.BoundedString(160) = .{};
    message.print("The request body is {d} bytes or more, more than the {d} the edge accepts.", .{ length, cfg.max_body_bytes });
    return reply(.{ .status = 413, .message = message.slice(), .code = "request_too_large" });
}

fn reply(e: openai.Error) u32 {
    return replyWith(e, &.{});
}

fn replyWith(e: openai.Error, extra: []const abi.pairs.Pair) u32 {
    var buffer: [openai.error_len_max]u8 = undefined;
    const text = openai.write(&buffer, e);
    var pairs: [4]abi.pairs.Pair = undefined;
    assert(extra.len < pairs.len);
    pairs[0] = .{ .name = "content-type", .value = "application/json" };
    @memcpy(pairs[1..][0..extra.len], extra);
    var headers_buffer: [1024]u8 = undefined;
    const headers = abi.pairs.encode(&headers_buffer, pairs[0 .. extra.len + 1]) orelse unreachable;
    const status = host.sendLocalResponse(e.status, "sluice_llm_refused", text, headers, host.grpc_status_none);
    if (status != .ok) host.logf(.err, "llm: send_local_response failed: {d}", .{@intFromEnum(status)});
    return pause;
}

comptime {
    assert(@sizeOf(@TypeOf(configs)) < 1024 * 1024);
    assert(piece_bytes < host.scratch_capacity);
}
