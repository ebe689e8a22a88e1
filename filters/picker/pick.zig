//! Pure choice of an endpoint from what the picker knows of each: its load (null: no fresh
//! report) and whether it is cooling down after a 429. Unit-tested natively.
const std = @import("std");
const assert = std.debug.assert;

pub const Candidate = struct {
    /// Requests waiting and running at the last fresh report; null when there is none.
    score: ?u32,
    cooling: bool,
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
/// 2018): endpoints in rendezvous order for `key` (each endpoint's hash with the key; the order
/// only changes for the endpoints added or removed), the first that can take one more request
/// within its capacity, `bound_pct` percent of the mean load counting this request, rounded up.
/// The capacities add up to at least the total, so some endpoint always has room. Past the bound,
/// or cooling, the next in that order, so a popular prefix spills to the same second replica
/// every time. Null when nothing is known (fail open to the cluster's policy) or every endpoint
/// is cooling.
pub fn affinity(candidates: []const Candidate, key: u64, addresses: []const []const u8, bound_pct: u32) ?usize {
    assert(candidates.len == addresses.len and candidates.len > 0 and candidates.len <= 64);
    assert(bound_pct >= 100);
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
    const capacity = std.math.divCeil(u64, (total + 1) * bound_pct, eligible * 100) catch unreachable;
    assert(capacity >= 1);
    var taken: u64 = 0; // bit i: endpoint i already ranked
    var rank: usize = 0;
    while (rank < candidates.len) : (rank += 1) {
        var best: ?usize = null;
        var best_weight: u64 = 0;
        for (addresses, 0..) |address, i| {
            if (taken & (@as(u64, 1) << @intCast(i)) != 0) continue;
            const weight = std.hash.Wyhash.hash(key, address);
            if (best == null or weight > best_weight) {
                best = i;
                best_weight = weight;
            }
        }
        const i = best.?;
        taken |= @as(u64, 1) << @intCast(i);
        const c = candidates[i];
        if (c.cooling) continue;
        if (@as(u64, c.score orelse 0) + 1 <= capacity) return i;
    }
    unreachable; // capacities add up to more than the load; cooling ones were skipped above
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

test "affinity: same key same endpoint, spills past the bound, fails open" {
    const addresses = [_][]const u8{ "10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000", "10.0.0.4:8000" };
    const idle = [_]Candidate{.{ .score = 0, .cooling = false }} ** 4;
    const key = prefixKey("You are a helpful assistant.");
    const home = affinity(&idle, key, &addresses, 125).?;
    try testing.expectEqual(home, affinity(&idle, key, &addresses, 125).?);
    // Different keys spread over the endpoints.
    var hits = [_]u32{0} ** 4;
    for (0..200) |n| {
        var text: [16]u8 = undefined;
        hits[affinity(&idle, prefixKey(std.fmt.bufPrint(&text, "prefix {d}", .{n}) catch unreachable), &addresses, 125).?] += 1;
    }
    for (hits) |h| try testing.expect(h > 20);
    // Home over the bound (16 in flight + this one, capacity ceil(1.25 * 17 / 4) = 6): the next
    // endpoint in this key's order, every time.
    var loaded = idle;
    for (&loaded) |*c| c.score = 2;
    loaded[home].score = 10;
    const spill = affinity(&loaded, key, &addresses, 125).?;
    try testing.expect(spill != home);
    try testing.expectEqual(spill, affinity(&loaded, key, &addresses, 125).?);
    var cooled = idle;
    cooled[home].cooling = true;
    try testing.expect(affinity(&cooled, key, &addresses, 125).? != home);
    const unknown = [_]Candidate{.{ .score = null, .cooling = false }} ** 4;
    try testing.expectEqual(@as(?usize, null), affinity(&unknown, key, &addresses, 125));
}

test "affinity: whatever the loads, some endpoint has room and none goes past its capacity" {
    const addresses = [_][]const u8{ "10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000" };
    var prng = std.Random.DefaultPrng.init(3);
    const random = prng.random();
    for (0..500) |n| {
        var loads: [3]Candidate = undefined;
        var total: u64 = 0;
        for (&loads) |*c| {
            c.* = .{ .score = random.uintLessThan(u32, 20), .cooling = false };
            total += c.score.?;
        }
        const bound: u32 = 100 + random.uintLessThan(u32, 100);
        const chosen = affinity(&loads, n, &addresses, bound).?;
        try testing.expect((loads[chosen].score.? + 1) * 100 * 3 <= (total + 1) * bound + 3 * 100 - 1);
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
