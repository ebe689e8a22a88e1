//! How an OpenAI stream ended: whether its `data: [DONE]` line passed, and whether its last byte
//! closed an event. Fed each response chunk as it passes (events cut anywhere across chunks), in
//! a few bytes of fixed state: the body is never held.
//!
//! A stream that ends without `[DONE]` lost its backend part-way (the generative backend frames
//! the streams the edge asks it to by closing the connection, which Envoy ends cleanly: see
//! docs/load-balancing.md); the edge then appends `terminal`, the error event vLLM and OpenAI
//! send in a stream, and `[DONE]`, so a client gets a defined end instead of a cut.
const std = @import("std");

/// The line that ends an OpenAI stream; the space after the colon is optional in SSE.
const line = "\ndata: [DONE]";
const space_at = std.mem.indexOfScalar(u8, line, ' ').?;

/// The error event and `[DONE]`, in the shape of the backend's own in-stream errors.
pub const terminal = "data: {\"error\":{\"message\":\"The upstream ended the stream before it finished; " ++
    "the request was not retried (part of the answer had been sent).\",\"type\":\"server_error\"," ++
    "\"param\":null,\"code\":\"upstream_stream_ended\"}}\n\ndata: [DONE]\n\n";

const closed_terminal = "\n\n" ++ terminal;

pub const Ending = struct {
    /// Bytes of `line` matched so far; the stream's start counts as a line start.
    matched: u8 = 1,
    done: bool = false,
    /// Line feeds since the last other byte (a carriage return does not count as other):
    /// 2 or more is an event boundary. The start of the stream is one.
    newlines: u2 = 2,

    pub fn feed(self: *Ending, chunk: []const u8) void {
        for (chunk) |byte| {
            switch (byte) {
                '\n' => self.newlines +|= 1,
                '\r' => {},
                else => self.newlines = 0,
            }
            if (self.done) continue;
            if (self.matched == space_at and byte == '[') {
                self.matched += 2;
            } else if (byte == line[self.matched]) {
                self.matched += 1;
            } else {
                // '\n' occurs only at the start of `line`, so a mismatch restarts there.
                self.matched = if (byte == '\n') 1 else 0;
            }
            if (self.matched == line.len) self.done = true;
        }
    }

    /// What to append at the end of the stream: nothing after `[DONE]`; else the line feeds that
    /// close the event the stream stopped in (it reaches the client as it is), then `terminal`.
    pub fn missing(self: *const Ending) []const u8 {
        if (self.done) return "";
        return closed_terminal[@min(self.newlines, 2)..];
    }
};

/// Whether the streams of the API at `path` end with `data: [DONE]`: `.../chat/completions` and
/// `.../completions`, under any prefix. Not the Responses API's (`.../responses`), which end with
/// a `response.completed` event and no `[DONE]`: those are left alone.
pub fn endsWithDone(path: []const u8) bool {
    const end = std.mem.indexOfScalar(u8, path, '?') orelse path.len;
    return std.mem.endsWith(u8, path[0..end], "/completions");
}

// ---------------------------------------------------------------------------------------------

const testing = std.testing;

fn fed(chunks: []const []const u8) Ending {
    var e: Ending = .{};
    for (chunks) |c| e.feed(c);
    return e;
}

test "a stream that ends with [DONE] gets nothing, however its chunks cut it" {
    const whole = "data: {\"id\":\"a\",\"choices\":[{\"text\":\"[DONE]\"}]}\n\ndata: [DONE]\n\n";
    for (0..whole.len + 1) |cut| {
        for (cut..whole.len + 1) |second| {
            const e = fed(&.{ whole[0..cut], whole[cut..second], whole[second..] });
            try testing.expect(e.done);
            try testing.expectEqualStrings("", e.missing());
        }
    }
    try testing.expect(fed(&.{"data:[DONE]\n\n"}).done);
    try testing.expect(fed(&.{"data: {}\r\n\r\ndata: [DONE]\r\n\r\n"}).done);
}

test "[DONE] counts only as a data line's value at a line start" {
    try testing.expect(!fed(&.{"data: {\"text\":\"data: [DONE]\"}\n\n"}).done);
    try testing.expect(!fed(&.{"data: {}\n\nxdata: [DONE]\n\n"}).done);
    try testing.expect(!fed(&.{"data: {}\n\ndata: [DONE\n\n"}).done);
    try testing.expect(!fed(&.{"data: {}\n\ndata:  [DONE]\n\n"}).done);
    try testing.expect(fed(&.{ "data: {}\n", "\n", "\ndata", ": [DO", "NE]" }).done);
}

test "a stream cut short gets the error event and [DONE], after closing the event it stopped in" {
    const cases = [_]struct { chunks: []const []const u8, separator: []const u8 }{
        .{ .chunks = &.{ "data: {\"n\":1}\n\n", "data: {\"n\":2}\n\n" }, .separator = "" },
        .{ .chunks = &.{ "data: {\"n\":1}\n\n", "data: {\"n\"" }, .separator = "\n\n" },
        .{ .chunks = &.{ "data: {\"n\":1}\n\n", "data: {\"n\":2}\n" }, .separator = "\n" },
        .{ .chunks = &.{"data: {\"n\":1}\r\n\r\n"}, .separator = "" },
        .{ .chunks = &.{}, .separator = "" },
    };
    for (cases) |case| {
        const e = fed(case.chunks);
        try testing.expect(!e.done);
        const missing = e.missing();
        try testing.expectEqualStrings(case.separator, missing[0 .. missing.len - terminal.len]);
        try testing.expectEqualStrings(terminal, missing[case.separator.len..]);
    }
}

test "the terminal event is one JSON object with OpenAI's error fields, then [DONE]" {
    const event = terminal["data: ".len..std.mem.indexOf(u8, terminal, "\n\n").?];
    const parsed = try std.json.parseFromSlice(std.json.Value, testing.allocator, event, .{});
    defer parsed.deinit();
    const err = parsed.value.object.get("error").?.object;
    try testing.expectEqualStrings("server_error", err.get("type").?.string);
    try testing.expectEqualStrings("upstream_stream_ended", err.get("code").?.string);
    try testing.expect(std.mem.endsWith(u8, terminal, "\n\ndata: [DONE]\n\n"));
    try testing.expect(fed(&.{terminal}).done);
}

test "only chat completions and completions streams are expected to end with [DONE]" {
    for ([_][]const u8{ "/v1/chat/completions", "/v1/completions", "/openai/v1/chat/completions?x=1" }) |path| {
        try testing.expect(endsWithDone(path));
    }
    for ([_][]const u8{ "/v1/responses", "/v1/messages", "/v1/completions/x", "/v1/models", "" }) |path| {
        try testing.expect(!endsWithDone(path));
    }
}

comptime {
    std.debug.assert(@sizeOf(Ending) <= 4);
}
