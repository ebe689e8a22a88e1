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
//! `x-sluice-tenant` (replacing anything the client sent).
//!
//! Exports only what it needs: configure, request headers, request body.
const std = @import("std");
const assert = std.debug.assert;
const abi = @import("abi");
const host = abi.host;
const body = @import("body.zig");
const config = @import("config.zig");
const openai = @import("openai.zig");

pub const panic = abi.panic;

export fn proxy_abi_version_0_2_1() void {}

export fn proxy_on_memory_allocate(size: usize) ?[*]u8 {
    return host.allocate(size);
}

const route_name_property = "xds\x00route_name";
const model_header = "x-sluice-model";
/// The tenant of the request's API key, for the backend and the limits.
const tenant_header = "x-sluice-tenant";
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
        const tenant = authenticate(cfg) orelse return pause;
        _ = host.replaceHeader(.request_headers, tenant_header, tenant);
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

/// The tenant whose key the request carries (`Authorization: Bearer <key>`); null when it
/// carries none or an unknown one, after answering 401. The key is never logged or echoed.
fn authenticate(cfg: *const config.Config) ?[]const u8 {
    const scheme = "bearer ";
    const value = host.getHeader(.request_headers, "authorization") orelse "";
    if (value.len <= scheme.len or !std.ascii.startsWithIgnoreCase(value, scheme)) {
        _ = reply(.{ .status = 401, .type = "invalid_request_error", .message = "You didn't provide an API key. " ++
            "You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)." });
        return null;
    }
    var digest: config.Digest = undefined;
    std.crypto.hash.sha2.Sha256.hash(std.mem.trim(u8, value[scheme.len..], " "), &digest, .{});
    const tenant = cfg.tenantOf(&digest) orelse {
        _ = reply(.{ .status = 401, .message = "Incorrect API key provided.", .code = "invalid_api_key" });
        return null;
    };
    return tenant.slice();
}

export fn proxy_on_request_body(context_id: u32, body_buffer_length: u32, end_of_stream: u32) u32 {
    _ = context_id;
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
    const target = found.pick(draw(found.weight_total));
    _ = host.replaceHeader(.request_headers, model_header, target.header.slice());
    const rewrite = target.rewrite.slice();
    if (rewrite.len > 0 and !std.mem.eql(u8, rewrite, model.value.slice())) {
        if (!rewriteModel(model.start_hint, model.end, rewrite, body_buffer_length)) {
            return reply(.{ .status = 400, .message = "The request's model field could not be rewritten.", .param = "model" });
        }
    }
    return continue_;
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
/// `start_hint`, with `"<rewrite>"`, and fixes Content-Length. Envoy replaces body bytes only at
/// the front (it drains a prefix and prepends), so the bytes before the model are copied into
/// the new prefix: a heap buffer, freed before returning (rewrites only; clients often send
/// `messages` before `model`, so that prefix can be most of the body).
fn rewriteModel(start_hint: u64, end: u64, rewrite: []const u8, length: u32) bool {
    assert(end > start_hint and end <= length);
    if (end - start_hint > model_window_max) return false;
    const window = host.getBuffer(.http_request_body, @intCast(start_hint), @intCast(end - start_hint)) orelse return false;
    const start: usize = @intCast(start_hint + (body.modelStart(window) orelse return false));
    const prefix = std.heap.wasm_allocator.alloc(u8, start + rewrite.len + 2) catch return false;
    defer std.heap.wasm_allocator.free(prefix);
    var offset: usize = 0;
    while (offset < start) {
        host.beginCallback();
        const piece = host.getBuffer(.http_request_body, offset, @min(piece_bytes, start - offset)) orelse return false;
        if (piece.len == 0) return false;
        @memcpy(prefix[offset..][0..piece.len], piece);
        offset += piece.len;
    }
    _ = std.fmt.bufPrint(prefix[start..], "\"{s}\"", .{rewrite}) catch unreachable;
    if (host.setBuffer(.http_request_body, 0, @intCast(end), prefix) != .ok) return false;
    if (host.getHeader(.request_headers, "content-length") != null) {
        var digits: [20]u8 = undefined;
        const new_length = length - end + prefix.len;
        _ = host.replaceHeader(.request_headers, "content-length", std.fmt.bufPrint(&digits, "{d}", .{new_length}) catch unreachable);
    }
    return true;
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
    var buffer: [openai.error_len_max]u8 = undefined;
    const text = openai.write(&buffer, e);
    var headers_buffer: [64]u8 = undefined;
    const headers = abi.pairs.encode(&headers_buffer, &.{.{ .name = "content-type", .value = "application/json" }}) orelse unreachable;
    const status = host.sendLocalResponse(e.status, "sluice_llm_refused", text, headers, host.grpc_status_none);
    if (status != .ok) host.logf(.err, "llm: send_local_response failed: {d}", .{@intFromEnum(status)});
    return pause;
}

comptime {
    assert(@sizeOf(@TypeOf(configs)) < 1024 * 1024);
    assert(piece_bytes < host.scratch_capacity);
}
