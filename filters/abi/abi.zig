//! sluice's own thin proxy-wasm ABI 0.2.1 layer, shared by every filter.
//!
//! - host.zig: host imports and allocation-free wrappers (logging, clock, properties, header maps,
//!   buffers, shared data with cas, metrics, local responses, ticks) plus the scratch arena behind
//!   `proxy_on_memory_allocate`.
//! - client.zig: client IP of a request (X-Forwarded-For with trusted hops, or the peer).
//! - ip.zig, pairs.zig, arena.zig: pure helpers (unit-tested natively).
//! - bounded.zig, message.zig: inline bounded strings, and the message of a refused plugin
//!   configuration (pure, unit-tested natively); shared by the filters' configuration parsers.
//! - json_config.zig: a JSON plugin configuration parsed into a filter's schema struct.
//!
//! A filter's main.zig must export, besides its callbacks:
//!   export fn proxy_abi_version_0_2_1() void {}
//!   export fn proxy_on_memory_allocate(size: usize) ?[*]u8 { return abi.host.allocate(size); }
//! and call `abi.host.beginCallback()` first in every other exported callback.
pub const host = @import("host.zig");
pub const client = @import("client.zig");
pub const ip = @import("ip.zig");
pub const pairs = @import("pairs.zig");
pub const Arena = @import("arena.zig").Arena;
pub const BoundedString = @import("bounded.zig").BoundedString;
pub const message = @import("message.zig");
pub const Message = message.Message;
pub const json_config = @import("json_config.zig");

/// Panic handler for wasm filters: log at critical level through the host, then trap (the VM
/// is marked failed by the host). Use as `pub const panic = abi.panic;` in a filter's main.zig.
pub const panic = @import("std").debug.FullPanic(panicLog);

fn panicLog(text: []const u8, _: ?usize) noreturn {
    @branchHint(.cold);
    host.logf(.critical, "panic: {s}", .{text});
    @trap();
}

// Native unit tests of the pure parts (`zig build test`; host.zig and client.zig need the host).
test {
    _ = @import("arena.zig");
    _ = @import("bounded.zig");
    _ = @import("ip.zig");
    _ = @import("json_config.zig");
    _ = @import("message.zig");
    _ = @import("pairs.zig");
}
