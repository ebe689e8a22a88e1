//! Pure choice of an endpoint from what the picker knows of each: its load (null: no fresh
//! report) and whether it is cooling down after a 429. Unit-tested natively.
const std = @import("std");
const assert = std.debug.assert;

pub const Candidate = struct {
    /// Requests waiting and running at the last fresh report; null when there is none.
    score: ?u32,
    cooling: bool,
    /// How many of this worker's recent picks on the route went here (memo.Recent; affinity only).
    recent: u32 = 0,
};

/// The load a pick compares: the replica's last fresh report or the requests this worker has in
/// flight to it, whichever is higher (reports lag; in flight counts at once). Null: nothing known.
pub fn combined(reported: ?u32, local_in_flight: u32) ?u32 {
    if (reported == null and local_in_flight == 0) return null;
    return @max(reported orelse 0, local_in_flight);
}

/// Power of two choices among the endpoints not cooling down: the lower score of two drawn
/// at random (`draw` supplies the randomness), so requests between two reports do not all land
/// on the one that looked idlest. An endpoint without a fresh report counts as idle, so it gets
/// traffic and reports again. Null when nothing is known at all (every report stale or missing)
/// or every endpoint is cooling: the cluster's own policy then picks (fail open).
pub fn twoChoices(candidates: []const Candidate, draw: *std.Random) ?usize {
    assert(candidates.len > 0);
    var eligible: usize = 0;
    var known = false;
    for (candidates) |c| {
        if (c.cooling) continue;
        eligible += 1;
        known = known or c.score != null;
    }
    if (eligible == 0 or !known) return null;
    const first = nthEligible(candidates, draw.uintLessThan(usize, eligible));
    if (eligible == 1) return first;
    var second_rank = draw.uintLessThan(usize, eligible - 1);
    if (second_rank >= rankOf(candidates, first)) second_rank += 1;
    const second = nthEligible(candidates, second_rank);
    assert(first != second);
    return if ((candidates[second].score orelse 0) < (candidates[first].score orelse 0)) second else first;
}

fn nthEligible(candidates: []const Candidate, n: usize) usize {
    var seen: usize = 0;
    for (candidates, 0..) |c, i| {
        if (c.cooling) continue;
        if (seen == n) return i;
        seen += 1;
    }
    unreachable;
}

fn rankOf(candidates: []const Candidate, index: usize) usize {
    var rank: usize = 0;
    for (candidates[0..index]) |c| {
        if (!c.cooling) rank += 1;
    }
    return rank;
}

/// Prefix affinity with a load bound (consistent hashing with bounded loads, Mirrokni et al.
/// 2018), aware of where the prompt was sent lately. `warm` bit i: the prompt is likely in
/// endpoint i's cache (memo.zig). The bound holds on each endpoint's share of this worker's last
/// `window` picks on the route (`recent`: the load it is given over time), not on its requests in
/// flight at this instant: with a few requests in flight per replica, in-flight counts swing past
/// any bound from one request to the next, and each time a warm prompt was sent away for it, it
/// missed there and left a second copy that evicted other prompts. Endpoints are taken in
/// rendezvous order for `key` (each endpoint's hash with the key; the order only changes for the
/// endpoints added or removed):
///   1. the first that holds the prompt warm, whose picks in the window counting this one are
///      within `bound_pct` percent of its share (`window` over the endpoints), and whose requests
///      in flight counting this one are within twice that multiple of the mean (a burst of one
///      prompt queues on its replica only so far);
///   2. else the first whose picks are under its share and whose requests in flight counting this
///      one are at or under the mean: a prompt no replica with room holds misses wherever it
///      goes, so it goes where it evens the load over time, and its next requests follow it there;
///   3. else the first whose requests in flight are at or under the mean (by pigeonhole there is one).
/// Until `window` picks are made, shares are of the whole window: an idle route starts with room.
/// Cooling endpoints are skipped. Null when nothing is known (fail open to the cluster's policy)
/// or every endpoint is cooling.
pub fn affinity(candidates: []const Candidate, key: u64, addresses: []const []const u8, warm: u64, bound_pct: u32, window: u32) ?usize {
    assert(candidates.len == addresses.len and candidates.len > 0 and candidates.len <= 64);
    assert(bound_pct >= 100 and window > 0);
    var total: u64 = 0;
    var eligible: u64 = 0;
    var known = false;
    for (candidates) |c| {
        if (c.cooling) continue;
        eligible += 1;
        total += c.score orelse 0;
        known = known or c.score != null;
    }
    if (eligible == 0 or !known) return null;
    var order: [64]usize = undefined;
    rendezvous(key, addresses, order[0..candidates.len]);
    const burst = std.math.divCeil(u64, (total + 1) * 2 * bound_pct, eligible * 100) catch unreachable;
    const mean = std.math.divCeil(u64, total + 1, eligible) catch unreachable;
    for (order[0..candidates.len]) |i| {
        const c = candidates[i];
        if (c.cooling or warm & (@as(u64, 1) << @intCast(i)) == 0) continue;
        const within = (@as(u64, c.recent) + 1) * eligible * 100 <= @as(u64, window) * bound_pct;
        if (within and @as(u64, c.score orelse 0) + 1 <= burst) return i;
    }
    for (order[0..candidates.len]) |i| {
        const c = candidates[i];
        if (!c.cooling and (@as(u64, c.recent) + 1) * eligible <= window and @as(u64, c.score orelse 0) + 1 <= mean) return i;
    }
    for (order[0..candidates.len]) |i| {
        const c = candidates[i];
        if (!c.cooling and @as(u64, c.score orelse 0) + 1 <= mean) return i;
    }
    unreachable; // the least loaded eligible endpoint carries at most floor(total / eligible)
}

/// Endpoint indices by decreasing hash of (key, address): highest random weight first.
fn rendezvous(key: u64, addresses: []const []const u8, order: []usize) void {
    assert(order.len == addresses.len and order.len <= 64);
    var weights: [64]u64 = undefined;
    for (addresses, 0..) |address, i| {
        weights[i] = std.hash.Wyhash.hash(key, address);
        order[i] = i;
    }
    const Context = struct {
        weights: []const u64,
        fn greater(ctx: @This(), a: usize, b: usize) bool {
            return ctx.weights[a] > ctx.weights[b];
        }
    };
    std.sort.insertion(usize, order, Context{ .weights = weights[0..order.len] }, Context.greater);
}

/// The key of a prompt: a hash of its first bytes.
pub fn prefixKey(prompt: []const u8) u64 {
    return std.hash.Wyhash.hash(0x51_c3, prompt);
}

const testing = std.testing;

test "combined load" {
    try testing.expectEqual(@as(?u32, null), combined(null, 0));
    try testing.expectEqual(@as(?u32, 3), combined(null, 3));
    try testing.expectEqual(@as(?u32, 5), combined(5, 3));
    try testing.expectEqual(@as(?u32, 4), combined(1, 4));
}

test "two choices: lower score, skips cooling, fails open" {
    var prng = std.Random.DefaultPrng.init(7);
    var random = prng.random();
    const busy_idle = [_]Candidate{ .{ .score = 9, .cooling = false }, .{ .score = 1, .cooling = false } };
    for (0..20) |_| try testing.expectEqual(@as(?usize, 1), twoChoices(&busy_idle, &random));
    const cooling = [_]Candidate{ .{ .score = 9, .cooling = false }, .{ .score = 1, .cooling = true }, .{ .score = null, .cooling = true } };
    for (0..20) |_| try testing.expectEqual(@as(?usize, 0), twoChoices(&cooling, &random));
    const unknown = [_]Candidate{ .{ .score = null, .cooling = false }, .{ .score = null, .cooling = false } };
    try testing.expectEqual(@as(?usize, null), twoChoices(&unknown, &random));
    const all_cooling = [_]Candidate{.{ .score = 0, .cooling = true }};
    try testing.expectEqual(@as(?usize, null), twoChoices(&all_cooling, &random));
    // Among three, the busiest is never chosen (it loses to whichever other is drawn).
    const three = [_]Candidate{ .{ .score = 2, .cooling = false }, .{ .score = 50, .cooling = false }, .{ .score = null, .cooling = false } };
    for (0..50) |_| try testing.expect(twoChoices(&three, &random).? != 1);
}

test "affinity: a new prompt goes to its home unless over the mean, a warm one back where it is within the bound" {
    const addresses = [_][]const u8{ "10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000", "10.0.0.4:8000" };
    const idle = [_]Candidate{.{ .score = 0, .cooling = false }} ** 4;
    const key = prefixKey("You are a helpful assistant.");
    var order: [4]usize = undefined;
    rendezvous(key, &addresses, &order);
    const home = order[0];
    try testing.expectEqual(home, affinity(&idle, key, &addresses, 0, 125, 128).?);
    // Different keys spread over the endpoints.
    var hits = [_]u32{0} ** 4;
    for (0..200) |n| {
        var text: [16]u8 = undefined;
        hits[affinity(&idle, prefixKey(std.fmt.bufPrint(&text, "prefix {d}", .{n}) catch unreachable), &addresses, 0, 125, 128).?] += 1;
    }
    for (hits) |h| try testing.expect(h > 20);
    // Warm on the last in its order, which has room: there, not home.
    const warm_last = @as(u64, 1) << @intCast(order[3]);
    var loaded = idle;
    for (&loaded) |*c| c.* = .{ .score = 2, .cooling = false, .recent = 32 };
    try testing.expectEqual(order[3], affinity(&loaded, key, &addresses, warm_last, 125, 128).?);
    // Far past the mean in flight there, but within twice the bound (17 + this one: ceil(2.5 * 18 / 4)
    // = 12): still there. One more, past it: away, to the first in its order at or under the mean.
    loaded[order[3]].score = 11;
    try testing.expectEqual(order[3], affinity(&loaded, key, &addresses, warm_last, 125, 128).?);
    loaded[order[3]].score = 12;
    try testing.expectEqual(home, affinity(&loaded, key, &addresses, warm_last, 125, 128).?);
    // Its picks within its share times the bound (40 of 128, 1.25 * 32, counting this one): there.
    loaded[order[3]] = .{ .score = 2, .cooling = false, .recent = 39 };
    try testing.expectEqual(order[3], affinity(&loaded, key, &addresses, warm_last, 125, 128).?);
    // Past it: away, and home over its share: the next in its order under its share and at or
    // under the mean in flight.
    loaded[order[3]].recent = 40;
    loaded[home].recent = 32;
    loaded[order[1]].recent = 20;
    loaded[order[2]].recent = 36;
    try testing.expectEqual(order[1], affinity(&loaded, key, &addresses, warm_last, 125, 128).?);
    try testing.expectEqual(order[1], affinity(&loaded, key, &addresses, 0, 125, 128).?);
    // Every share over the mean: the first at or under the mean in flight.
    for (&loaded) |*c| c.recent = 40;
    loaded[home].score = 3;
    try testing.expectEqual(order[1], affinity(&loaded, key, &addresses, 0, 125, 128).?);
    var cooled = idle;
    cooled[home].cooling = true;
    try testing.expectEqual(order[1], affinity(&cooled, key, &addresses, @as(u64, 1) << @intCast(home), 125, 128).?);
    const unknown = [_]Candidate{.{ .score = null, .cooling = false }} ** 4;
    try testing.expectEqual(@as(?usize, null), affinity(&unknown, key, &addresses, 0, 125, 128));
}

test "affinity: whatever the loads, shares and caches, some endpoint has room, warm first within the bound" {
    const addresses = [_][]const u8{ "10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000" };
    const window = 96;
    var prng = std.Random.DefaultPrng.init(3);
    const random = prng.random();
    for (0..1000) |n| {
        var loads: [3]Candidate = undefined;
        var total: u64 = 0;
        var picks: u32 = 0;
        for (&loads) |*c| {
            const recent = random.uintLessThan(u32, window - picks + 1);
            picks += recent;
            c.* = .{ .score = random.uintLessThan(u32, 20), .cooling = false, .recent = recent };
            total += c.score.?;
        }
        const bound: u32 = 100 + random.uintLessThan(u32, 100);
        const warm = random.uintLessThan(u64, 8);
        const chosen = affinity(&loads, n, &addresses, warm, bound, window).?;
        const load: u64 = loads[chosen].score.? + 1;
        var warm_with_room = false;
        for (loads, 0..) |c, i| {
            const within = (@as(u64, c.recent) + 1) * 3 * 100 <= window * bound and
                (@as(u64, c.score.?) + 1) * 100 * 3 <= (total + 1) * 2 * bound + 3 * 100 - 1;
            if (warm & (@as(u64, 1) << @intCast(i)) != 0 and within) warm_with_room = true;
        }
        if (warm_with_room) {
            try testing.expect(warm & (@as(u64, 1) << @intCast(chosen)) != 0);
            try testing.expect((loads[chosen].recent + 1) * 3 * 100 <= window * bound);
            try testing.expect(load * 100 * 3 <= (total + 1) * 2 * bound + 3 * 100 - 1);
        } else {
            try testing.expect(load * 3 <= total + 1 + 3 - 1); // at or under the mean, rounded up
        }
    }
}

/// The bytes of an OpenAI body that make its prefix key: `n` bytes from its `"messages"` (chat)
/// or `"prompt"` (completions) key on, or from the start when it has neither. Requests sharing a
/// system prompt share these bytes whatever fields precede them, so they share the key.
pub fn promptWindow(body: []const u8, n: usize) []const u8 {
    assert(n > 0);
    const start = std.mem.indexOf(u8, body, "\"messages\"") orelse std.mem.indexOf(u8, body, "\"prompt\"") orelse 0;
    return body[start..@min(body.len, start + n)];
}

test "prompt window" {
    const chat = "{\"model\":\"m\",\"max_tokens\":9,\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"}]}";
    try testing.expectEqualStrings("\"messages\":[{\"role\"", promptWindow(chat, 19));
    try testing.expectEqualStrings("\"prompt\":\"Once", promptWindow("{\"prompt\":\"Once upon\",\"model\":\"m\"}", 14));
    try testing.expectEqualStrings("abc", promptWindow("abc", 10));
    const other = "{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"}]}";
    try testing.expectEqual(prefixKey(promptWindow(chat, 40)), prefixKey(promptWindow(other, 40)));
}
