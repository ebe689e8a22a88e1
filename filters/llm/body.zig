//! The top-level fields of an OpenAI request body that the edge acts on, read from the body fed
//! in pieces (the host hands it over in bounded slices): `model`, `max_tokens` /
//! `max_completion_tokens`, `stream`. The whole body is validated as JSON on the way (std.json's
//! streaming scanner), so a body that is not JSON is refused at the edge. No allocation: the
//! scanner's nesting stack lives in a fixed buffer (`depth_max` levels). Pure, unit-tested.
//!
//! Self-contained on purpose: another filter that needs a field of the body (a prefix key for
//! endpoint picking) can reuse `Fields`/`Reader` with its own list of keys.
const std = @import("std");
const assert = std.debug.assert;
const abi = @import("abi");

pub const model_len_max = 256;
pub const depth_max = 64;
/// Keys longer than this are none of ours: only their length matters.
const key_len_max = 32;
const number_len_max = 24;

pub const Model = union(enum) {
    absent,
    /// Decoded value; `span` is where its JSON string (quotes included) lies in the body.
    string: struct { value: abi.BoundedString(model_len_max), start_hint: u64, end: u64 },
    too_long,
    not_string,
};

pub const MaxTokens = union(enum) { absent, value: u32, invalid };

pub const Fields = struct {
    model: Model = .absent,
    max_tokens: MaxTokens = .absent,
    stream: bool = false,
    /// The client chose its stream options (the edge then asks for no usage on its behalf).
    stream_options: bool = false,
    /// Body offset just after the top-level object's `{`: where a field can be inserted.
    after_brace: u64 = 0,
};

pub const Failure = enum { not_json, not_object, too_deep };

pub const Result = union(enum) { fields: Fields, failure: Failure };

const Key = enum { model, max_tokens, stream, stream_options, other };

/// What the reader is in the middle of, at the top level of the object.
const State = union(enum) {
    start,
    key: abi.BoundedString(key_len_max),
    key_too_long,
    /// The value of a key, before its first token.
    value: Key,
    model: abi.BoundedString(model_len_max),
    model_too_long,
    number: abi.BoundedString(number_len_max),
    number_too_long,
    /// Inside a nested value: skipped until depth 1 again.
    skip,
    /// Inside a long string or number of no interest: skipped until its last piece.
    skip_scalar,
    done,
};

pub const Reader = struct {
    /// Room for the scanner's bit stack beyond `depth_max` levels (it grows like an ArrayList).
    stack_memory: [4 * depth_max]u8 = undefined,
    fba: std.heap.FixedBufferAllocator = undefined,
    scanner: std.json.Scanner = undefined,
    state: State = .start,
    fields: Fields = .{},
    /// Bytes fed before the current piece: turns scanner cursors into body offsets.
    offset: u64 = 0,
    /// Body offset just after the current key's closing quote.
    key_end: u64 = 0,
    current_key: Key = .other,

    pub fn init(self: *Reader) void {
        self.* = .{};
        self.fba = std.heap.FixedBufferAllocator.init(&self.stack_memory);
        self.scanner = std.json.Scanner.initStreaming(self.fba.allocator());
    }

    /// Feeds the next piece of the body; null: fine so far.
    pub fn feed(self: *Reader, piece: []const u8) ?Failure {
        self.offset += self.scanner.input.len;
        self.scanner.feedInput(piece);
        return self.drain();
    }

    /// After the last piece: the fields, or why the body is refused.
    pub fn finish(self: *Reader) Result {
        self.scanner.endInput();
        if (self.drain()) |failure| return .{ .failure = failure };
        if (self.state != .done) return .{ .failure = .not_json };
        return .{ .fields = self.fields };
    }

    fn drain(self: *Reader) ?Failure {
        while (true) {
            const token = self.scanner.next() catch |err| return switch (err) {
                error.BufferUnderrun => null,
                error.OutOfMemory => .too_deep,
                else => .not_json,
            };
            if (token == .end_of_document) {
                assert(self.state == .done);
                return null;
            }
            if (self.state == .done) return .not_json;
            if (self.scanner.stackHeight() > depth_max) return .too_deep;
            if (self.step(token)) |failure| return failure;
        }
    }

    fn step(self: *Reader, token: std.json.Token) ?Failure {
        const depth = self.scanner.stackHeight();
        switch (self.state) {
            .start => {
                if (token != .object_begin) return .not_object;
                self.fields.after_brace = self.offset + self.scanner.cursor;
                self.state = .{ .key = .{} };
            },
            .key => |*key| switch (token) {
                .object_end => self.state = .done,
                .string => |s| self.endKey(appendTo(key_len_max, key, s)),
                .partial_string => |s| {
                    if (!appendTo(key_len_max, key, s)) self.state = .key_too_long;
                },
                .partial_string_escaped_1, .partial_string_escaped_2, .partial_string_escaped_3, .partial_string_escaped_4 => {
                    if (!appendTo(key_len_max, key, escaped(&token))) self.state = .key_too_long;
                },
                else => unreachable, // the scanner only gives keys here
            },
            .key_too_long => if (token == .string) self.endKey(false),
            .value => |key| self.startValue(key, token, depth),
            .model => |*model| self.continueModel(model, token),
            .model_too_long => if (token == .string) self.endValue(.{ .model = .too_long }),
            .number => |*number| switch (token) {
                .partial_number => |s| {
                    if (!appendTo(number_len_max, number, s)) self.state = .number_too_long;
                },
                .number => |s| {
                    const complete = appendTo(number_len_max, number, s);
                    self.endValue(.{ .max_tokens = if (complete) positive(number.slice()) else .invalid });
                },
                else => unreachable,
            },
            .number_too_long => if (token == .number) self.endValue(.{ .max_tokens = .invalid }),
            .skip => if (depth == 1 and (token == .object_end or token == .array_end)) {
                self.state = .{ .key = .{} };
            },
            .skip_scalar => if (token == .string or token == .number) {
                self.state = .{ .key = .{} };
            },
            .done => unreachable,
        }
        return null;
    }

    fn endKey(self: *Reader, complete: bool) void {
        const name = if (self.state == .key and complete) self.state.key.slice() else "";
        self.key_end = self.offset + self.scanner.cursor;
        const key: Key = if (std.mem.eql(u8, name, "model"))
            .model
        else if (std.mem.eql(u8, name, "max_tokens") or std.mem.eql(u8, name, "max_completion_tokens"))
            .max_tokens
        else if (std.mem.eql(u8, name, "stream"))
            .stream
        else if (std.mem.eql(u8, name, "stream_options"))
            .stream_options
        else
            .other;
        self.state = .{ .value = key };
    }

    fn startValue(self: *Reader, key: Key, token: std.json.Token, depth: usize) void {
        const nested = token == .object_begin or token == .array_begin;
        switch (key) {
            .model => switch (token) {
                .string, .partial_string, .partial_string_escaped_1, .partial_string_escaped_2, .partial_string_escaped_3, .partial_string_escaped_4 => {
                    self.state = .{ .model = .{} };
                    self.continueModel(&self.state.model, token);
                    return;
                },
                else => self.fields.model = .not_string,
            },
            .max_tokens => switch (token) {
                .number, .partial_number => {
                    self.state = .{ .number = .{} };
                    _ = self.step(token);
                    return;
                },
                .null => {},
                else => self.fields.max_tokens = .invalid,
            },
            .stream => self.fields.stream = token == .true,
            .stream_options => self.fields.stream_options = token != .null,
            .other => {},
        }
        if (nested) {
            assert(depth == 2);
            self.state = .skip;
            return;
        }
        if (isPartial(token)) {
            self.state = .skip_scalar;
            return;
        }
        self.state = .{ .key = .{} };
    }

    fn continueModel(self: *Reader, model: *abi.BoundedString(model_len_max), token: std.json.Token) void {
        switch (token) {
            .string => |s| {
                if (!appendTo(model_len_max, model, s)) return self.endValue(.{ .model = .too_long });
                self.endValue(.{ .model = .{ .string = .{ .value = model.*, .start_hint = self.key_end, .end = self.offset + self.scanner.cursor } } });
            },
            .partial_string => |s| {
                if (!appendTo(model_len_max, model, s)) self.state = .model_too_long;
            },
            else => {
                if (!appendTo(model_len_max, model, escaped(&token))) self.state = .model_too_long;
            },
        }
    }

    const Found = union(enum) { model: Model, max_tokens: MaxTokens };

    fn endValue(self: *Reader, found: Found) void {
        switch (found) {
            .model => |m| self.fields.model = m,
            .max_tokens => |m| self.fields.max_tokens = m,
        }
        self.state = .{ .key = .{} };
    }
};

fn isPartial(token: std.json.Token) bool {
    return switch (token) {
        .partial_string, .partial_number, .partial_string_escaped_1, .partial_string_escaped_2, .partial_string_escaped_3, .partial_string_escaped_4 => true,
        else => false,
    };
}

fn escaped(token: *const std.json.Token) []const u8 {
    return switch (token.*) {
        .partial_string_escaped_1 => |*b| b[0..],
        .partial_string_escaped_2 => |*b| b[0..],
        .partial_string_escaped_3 => |*b| b[0..],
        .partial_string_escaped_4 => |*b| b[0..],
        else => unreachable,
    };
}

/// Appends if it fits; false (and nothing appended) when it would not.
fn appendTo(comptime capacity: usize, string: *abi.BoundedString(capacity), more: []const u8) bool {
    if (string.len + more.len > capacity) return false;
    @memcpy(string.bytes[string.len..][0..more.len], more);
    string.len += @intCast(more.len);
    return true;
}

/// A JSON number that is a positive integer fitting u32 ("16", not "16.0", "1e3" or "-1").
fn positive(number: []const u8) MaxTokens {
    const value = std.fmt.parseInt(u32, number, 10) catch return .invalid;
    if (value == 0 or number[0] == '-' or number[0] == '+') return .invalid;
    return .{ .value = value };
}

/// Where the model's JSON string starts: the first quote at or after `start_hint` (the key's
/// end; a colon and whitespace lie between), within `window`, the body bytes from `start_hint`.
pub fn modelStart(window: []const u8) ?usize {
    for (window, 0..) |c, i| {
        switch (c) {
            '"' => return i,
            ':', ' ', '\t', '\r', '\n' => {},
            else => return null,
        }
    }
    return null;
}

// ---------------------------------------------------------------------------------------------

const testing = std.testing;

fn readPieces(pieces: []const []const u8) !Result {
    var reader: Reader = undefined;
    reader.init();
    for (pieces) |piece| {
        if (reader.feed(piece)) |failure| return .{ .failure = failure };
    }
    return reader.finish();
}

fn readAll(body: []const u8) !Fields {
    const result = try readPieces(&.{body});
    return result.fields;
}

fn expectFailure(expected: Failure, body: []const u8) !void {
    const result = try readPieces(&.{body});
    try testing.expectEqual(expected, result.failure);
}

test "model, max_tokens and stream at the top level; nested ones ignored" {
    const body =
        \\{"messages":[{"role":"user","content":"hi","model":"inner"}],"meta":{"model":"x","max_tokens":-1},
        \\ "model" : "tiny-llama", "max_tokens": 16, "stream": true}
    ;
    const fields = try readAll(body);
    try testing.expectEqualStrings("tiny-llama", fields.model.string.value.slice());
    try testing.expectEqual(@as(u32, 16), fields.max_tokens.value);
    try testing.expect(fields.stream and !fields.stream_options);
    try testing.expectEqual(@as(u64, 1), fields.after_brace);
    const s = fields.model.string;
    const start = s.start_hint + modelStart(body[s.start_hint..]).?;
    try testing.expectEqualStrings("\"tiny-llama\"", body[start..s.end]);
    try testing.expect((try readAll(" {\"stream_options\":{\"include_usage\":false}}")).stream_options);
    try testing.expectEqual(@as(u64, 2), (try readAll(" {}")).after_brace);
}

test "the same fields when the body arrives one byte at a time" {
    const body = "{\"max_completion_tokens\":123,\"stream\":false,\"model\":\"a\\u002db\",\"x\":[1,{\"y\":\"z\"}]}";
    var pieces: [body.len][]const u8 = undefined;
    for (&pieces, 0..) |*p, i| p.* = body[i .. i + 1];
    const fields = (try readPieces(&pieces)).fields;
    try testing.expectEqualStrings("a-b", fields.model.string.value.slice());
    try testing.expectEqual(@as(u32, 123), fields.max_tokens.value);
    try testing.expect(!fields.stream);
    const s = fields.model.string;
    const start = s.start_hint + modelStart(body[s.start_hint..]).?;
    try testing.expectEqualStrings("\"a\\u002db\"", body[start..s.end]);
}

test "model absent, not a string, too long" {
    try testing.expect((try readAll("{\"messages\":[]}")).model == .absent);
    try testing.expect((try readAll("{\"model\":5}")).model == .not_string);
    try testing.expect((try readAll("{\"model\":null}")).model == .not_string);
    try testing.expect((try readAll("{\"model\":[\"a\"],\"b\":1}")).model == .not_string);
    try testing.expect((try readAll("{\"model\":{\"a\":\"b\"}}")).model == .not_string);
    const long = "{\"model\":\"" ++ "m" ** (model_len_max + 1) ++ "\"}";
    try testing.expect((try readAll(long)).model == .too_long);
}

test "max_tokens must be a positive integer; null is absent" {
    try testing.expect((try readAll("{\"max_tokens\":null}")).max_tokens == .absent);
    for ([_][]const u8{ "0", "-1", "1.5", "1e3", "\"16\"", "true", "[]", "99999999999999999999999999" }) |bad| {
        var buffer: [64]u8 = undefined;
        const body = try std.fmt.bufPrint(&buffer, "{{\"max_tokens\":{s}}}", .{bad});
        try testing.expect((try readAll(body)).max_tokens == .invalid);
    }
}

test "not JSON, not an object, too deep" {
    try expectFailure(.not_json, "model=tiny");
    try expectFailure(.not_json, "{\"model\":\"a\"");
    try expectFailure(.not_json, "{\"model\":\"a\"} {}");
    try expectFailure(.not_json, "");
    try expectFailure(.not_object, "[\"model\"]");
    try expectFailure(.not_object, "\"model\"");
    try expectFailure(.too_deep, "{\"a\":" ++ "[" ** (depth_max + 8) ++ "]" ** (depth_max + 8) ++ "}");
    const deep = "{\"a\":" ++ "[" ** (depth_max - 1) ++ "]" ** (depth_max - 1) ++ ",\"model\":\"m\"}";
    try testing.expectEqualStrings("m", (try readAll(deep)).model.string.value.slice());
}
