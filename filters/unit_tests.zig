//! Native unit tests of the filters' pure logic (no host imports): `zig build test`.
test {
    _ = @import("abi/arena.zig");
    _ = @import("abi/ip.zig");
    _ = @import("abi/pairs.zig");
    _ = @import("ratelimit/gcra.zig");
    _ = @import("ratelimit/slots.zig");
    _ = @import("ratelimit/limiter.zig");
    _ = @import("ratelimit/config.zig");
    _ = @import("ratelimit/response.zig");
    _ = @import("ratelimit/streams.zig");
    _ = @import("ratelimit/key.zig");
    _ = @import("georoute/prefixes.zig");
    _ = @import("georoute/config.zig");
    _ = @import("georoute/table.zig");
}
