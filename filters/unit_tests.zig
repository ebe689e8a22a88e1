//! Native unit tests of the filters' pure logic (no host imports): `zig build test`. The abi
//! module's pure files are tested from abi/abi.zig (see build.zig).
test {
    _ = @import("ratelimit/gcra.zig");
    _ = @import("ratelimit/slots.zig");
    _ = @import("ratelimit/limiter.zig");
    _ = @import("ratelimit/config.zig");
    _ = @import("ratelimit/response.zig");
    _ = @import("ratelimit/streams.zig");
    _ = @import("ratelimit/key.zig");
    _ = @import("ratelimit/secret.zig");
    _ = @import("georoute/prefixes.zig");
    _ = @import("georoute/config.zig");
    _ = @import("georoute/table.zig");
    _ = @import("llm/body.zig");
    _ = @import("llm/budget.zig");
    _ = @import("llm/config.zig");
    _ = @import("llm/ending.zig");
    _ = @import("llm/openai.zig");
    _ = @import("llm/streams.zig");
    _ = @import("picker/config.zig");
    _ = @import("picker/report.zig");
    _ = @import("picker/pick.zig");
    _ = @import("picker/memo.zig");
}
