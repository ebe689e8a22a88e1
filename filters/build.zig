//! Builds the sluice proxy-wasm filters (wasm32-wasi reactor modules without an entry point,
//! every `export fn` exported) and runs the unit tests of their pure logic on the native target.
//!
//!   zig build -Doptimize=ReleaseSafe --prefix ../build/filters   -> ../build/filters/bin/<filter>.wasm
//!   zig build test                                               -> native unit tests
const std = @import("std");

/// Every filter lives in `<name>/main.zig` and imports the shared ABI layer as `abi`.
const filters = [_][]const u8{ "ratelimit", "georoute", "llm", "picker" };

pub fn build(b: *std.Build) void {
    const optimize = b.standardOptimizeOption(.{});
    const wasm_target = b.resolveTargetQuery(.{ .cpu_arch = .wasm32, .os_tag = .wasi });

    const abi = abiModule(b, wasm_target, optimize);

    for (filters) |name| {
        const exe = b.addExecutable(.{
            .name = name,
            .root_module = b.createModule(.{
                .root_source_file = b.path(b.fmt("{s}/main.zig", .{name})),
                .target = wasm_target,
                .optimize = optimize,
                // No DWARF in the shipped module: 1 MB -> ~150 KB, faster VM start per worker.
                .strip = optimize != .Debug,
                .imports = &.{.{ .name = "abi", .module = abi }},
            }),
        });
        // Equivalent of `-fno-entry -rdynamic`: a reactor module whose exports are the
        // proxy-wasm callbacks declared with `export fn`.
        exe.entry = .disabled;
        exe.rdynamic = true;
        b.installArtifact(exe);
    }

    // Unit tests of the pure logic (no host imports) on the native target: the abi module's own
    // (its test block names its pure files), and the filters' (importing that module as `abi`).
    const abi_native = abiModule(b, b.graph.host, optimize);
    const abi_tests = b.addTest(.{ .root_module = abi_native });
    const unit_tests = b.addTest(.{
        .root_module = b.createModule(.{
            .root_source_file = b.path("unit_tests.zig"),
            .target = b.graph.host,
            .optimize = optimize,
            .imports = &.{.{ .name = "abi", .module = abi_native }},
        }),
    });
    const test_step = b.step("test", "Run the unit tests of the filters' pure logic (native target)");
    test_step.dependOn(&b.addRunArtifact(abi_tests).step);
    test_step.dependOn(&b.addRunArtifact(unit_tests).step);
}

/// The shared ABI layer; a file belongs to one module only, so filters reach abi/ through it.
fn abiModule(b: *std.Build, target: std.Build.ResolvedTarget, optimize: std.builtin.OptimizeMode) *std.Build.Module {
    return b.createModule(.{
        .root_source_file = b.path("abi/abi.zig"),
        .target = target,
        .optimize = optimize,
    });
}
