package ratelimit

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/internal/timeutil"
)

// Cost is one spend for AllowAll and WaitAll: N units from Key's budget
// in Limiter. A Cost with a nil Limiter is skipped, so optional budgets
// (a per-user quota that is not configured) can be listed unconditionally.
type Cost struct {
	// Limiter holds the budget; nil skips the Cost.
	Limiter Limiter
	// Key names the budget within Limiter.
	Key string
	// N is the cost: 1 for a request, the token estimate for tokens.
	N int
}

// AllowAll spends every cost or none, without blocking on the budgets.
// The Decision is allowed only if every cost was spent; its RetryAfter
// and ResetAfter are the longest among the costs and its Remaining the
// smallest.
//
// When every cost's limiter is a *Redis on the same client and, on
// Cluster or Ring, their keys share a hash slot (see Config.HashTag),
// the decision is one script over all the keys: one round trip, atomic.
//
// Otherwise the costs are split into groups (the *Redis costs that can
// share a script, and each other cost alone) and the groups are spent in
// the order of their first cost; when one is denied or fails, the groups
// already spent are refunded with Adjust, and the denied group's
// RetryAfter is returned (later groups were not asked, so it may be
// shorter than the longest needed). This fallback is not atomic: between
// a spend and its refund, other callers may be denied budget that is then
// given back. Neither does a refund restore a *Local's budget exactly when
// others spent from it in between; it never gives back more than was
// spent.
//
// Bad input (a non-nil limiter with an empty key, N <= 0, or, for *Local
// and *Redis, N > Burst) returns a *chatscale.InputError with Field "Key"
// or "N" before anything is spent. Other errors are those of the limiters.
func AllowAll(ctx context.Context, costs ...Cost) (Decision, error) {
	groups, err := plan(costs)
	if err != nil {
		return Decision{}, err
	}
	d, _, err := allowGroups(ctx, groups)
	return d, err
}

// WaitAll blocks until every cost fits and spends them all, or spends
// none. When the wait would outlast ctx's deadline it returns a
// *LimitedError at once, without sleeping; when ctx ends while waiting it
// returns ctx's error, with nothing spent.
//
// When all the costs can share one script (see AllowAll), WaitAll is one
// round trip that reserves every cost, then sleeps until the slowest one
// fits; waiters are served in order. Each budget is charged its own cost
// on its own timeline: the spend counts in each budget from when it is
// reserved, not from when the wait ends. So a waiter holds exactly its
// cost of each budget (while it waits, other callers see exactly that much
// less Remaining), and when ctx ends during the wait the refund restores
// every budget exactly. The price: a budget that did not need the wait
// (the request budget, when the tokens are short) counts the call up to
// the wait before it is made, so the calls made in a window can exceed
// that budget by up to what it refills during the wait; over time no
// budget's rate is exceeded.
//
// Otherwise WaitAll calls AllowAll, and while denied sleeps for the
// RetryAfter and tries again; waiters are then not served in order.
//
// Bad input returns a *chatscale.InputError, as for AllowAll.
func WaitAll(ctx context.Context, costs ...Cost) error {
	groups, err := plan(costs)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(groups) == 0 {
		return nil
	}
	if len(groups) == 1 && groups[0].leader != nil {
		done, err := groups[0].wait(ctx)
		if done || err != nil {
			return err
		}
		// The leader failed open: wait on the fallbacks below.
		groups = groups[0].fallbacks()
	}
	clock, pause := timingOf(groups[0].costs[0].Limiter)
	for {
		d, key, err := allowGroups(ctx, groups)
		if err != nil || d.Allowed {
			return err
		}
		retry := max(d.RetryAfter, time.Millisecond)
		if budget, ok := budgetFor(ctx, clock()); ok && retry > budget {
			return &LimitedError{Key: key, RetryAfter: d.RetryAfter}
		}
		if err := pause(ctx, retry); err != nil {
			return err
		}
	}
}

// group is a set of costs decided together: several costs on *Redis
// limiters sharing one script (leader set), or one cost of any limiter.
type group struct {
	leader *Redis   // nil unless the costs are *Redis ones run as one script
	lims   []*Redis // the *Redis of each cost, when leader is set
	costs  []Cost
}

// plan validates costs and splits them into groups.
func plan(costs []Cost) ([]group, error) {
	var groups []group
	for _, c := range costs {
		if c.Limiter == nil {
			continue
		}
		if c.Key == "" {
			return nil, inputError("Key", "empty")
		}
		if c.N <= 0 {
			return nil, inputError("N", fmt.Sprintf("%d: a cost must be positive", c.N))
		}
		switch l := c.Limiter.(type) {
		case *Local:
			if err := l.check(c.Key, c.N); err != nil {
				return nil, err
			}
		case *Redis:
			if err := checkArgs(c.Key, c.N, l.limit); err != nil {
				return nil, err
			}
			joined := false
			for i := range groups {
				if g := &groups[i]; g.leader != nil && g.leader.client == l.client && sameNode(l.client, g.leader.Key(g.costs[0].Key), l.Key(c.Key)) {
					g.lims = append(g.lims, l)
					g.costs = append(g.costs, c)
					joined = true
					break
				}
			}
			if !joined {
				groups = append(groups, group{leader: l, lims: []*Redis{l}, costs: []Cost{c}})
			}
			continue
		}
		groups = append(groups, group{costs: []Cost{c}})
	}
	return groups, nil
}

// sameNode reports whether two keys can be in one script on client.
func sameNode(client redis.UniversalClient, a, b string) bool {
	switch client.(type) {
	case *redis.Client:
		return true
	case *redis.ClusterClient:
		return keySlot(a) == keySlot(b)
	default:
		// Ring and others shard by the hash tag string.
		return hashTag(a) == hashTag(b)
	}
}

// allowGroups spends the groups in order, refunding the spent ones when
// one is denied or fails. It returns the merged decision and, when
// denied, the key of the denied budget that needs the longest wait.
func allowGroups(ctx context.Context, groups []group) (Decision, string, error) {
	merged := Decision{Allowed: true, Remaining: math.MaxInt}
	for i, g := range groups {
		d, key, err := g.allow(ctx)
		if err != nil || !d.Allowed {
			refund(ctx, groups[:i])
			return d, key, err
		}
		merged.Remaining = min(merged.Remaining, d.Remaining)
		merged.ResetAfter = max(merged.ResetAfter, d.ResetAfter)
	}
	if merged.Remaining == math.MaxInt {
		merged.Remaining = 0
	}
	return merged, "", nil
}

// allow decides one group without blocking.
func (g group) allow(ctx context.Context) (Decision, string, error) {
	if g.leader == nil {
		c := g.costs[0]
		d, err := c.Limiter.Allow(ctx, c.Key, c.N)
		return d, c.Key, err
	}
	res, fb, err := g.run(ctx, modeAllow)
	if err != nil {
		return Decision{}, "", err
	}
	if fb {
		return allowGroups(ctx, g.fallbacks())
	}
	return res.decision(), g.longest(res), nil
}

// wait reserves the group's costs within ctx's deadline and sleeps until
// they take effect. done is false when the leader fails open, and the
// caller should wait on the fallbacks instead.
func (g group) wait(ctx context.Context) (done bool, err error) {
	res, fb, err := g.run(ctx, maxWait(ctx, g.leader.cfg.Now()))
	if err != nil || fb {
		return !fb, err
	}
	if !res.allowed {
		return true, &LimitedError{Key: g.longest(res), RetryAfter: res.wait}
	}
	if res.wait > 0 {
		if err := g.leader.sleep(ctx, res.wait); err != nil {
			refund(context.WithoutCancel(ctx), []group{g})
			return true, err
		}
	}
	return true, nil
}

// run evaluates the group's script and counts its decisions.
func (g group) run(ctx context.Context, mode int64) (result, bool, error) {
	keys := make([]string, len(g.costs))
	ns := make([]int, len(g.costs))
	for i, c := range g.costs {
		keys[i] = g.lims[i].Key(c.Key)
		ns[i] = c.N
	}
	res, fb, err := g.leader.run(ctx, mode, g.lims, keys, ns)
	if err == nil && !fb && mode != modeAdjust {
		for _, l := range g.lims {
			l.count(res.allowed)
		}
	}
	if fb {
		for _, l := range g.lims {
			l.fbCount.Add(1)
		}
	}
	return res, fb, err
}

// fallbacks returns the group's costs on the local fallbacks of its
// limiters, one group per cost, each cost capped at its fallback's burst.
func (g group) fallbacks() []group {
	out := make([]group, len(g.costs))
	for i, c := range g.costs {
		out[i] = group{costs: []Cost{{Limiter: g.lims[i].fallback, Key: c.Key, N: min(c.N, g.lims[i].fbBurst)}}}
	}
	return out
}

// longest returns the key of the bucket that needs the longest wait.
func (g group) longest(res result) string {
	best := 0
	for i, b := range res.buckets {
		if b.wait > res.buckets[best].wait {
			best = i
		}
	}
	return g.costs[best].Key
}

// refund gives back the costs of groups, newest first. Errors are
// dropped: a refund that fails leaves the budget spent, never overspent.
func refund(ctx context.Context, groups []group) {
	ctx = context.WithoutCancel(ctx)
	for i := len(groups) - 1; i >= 0; i-- {
		g := groups[i]
		if g.leader == nil {
			c := g.costs[0]
			_ = c.Limiter.Adjust(ctx, c.Key, -c.N)
			continue
		}
		neg := g
		neg.costs = make([]Cost, len(g.costs))
		for j, c := range g.costs {
			neg.costs[j] = Cost{Limiter: c.Limiter, Key: c.Key, N: -c.N}
		}
		if _, fb, _ := neg.run(ctx, modeAdjust); fb {
			for j, c := range g.costs {
				_ = g.lims[j].fallback.Adjust(ctx, c.Key, -min(c.N, g.lims[j].fbBurst))
			}
		}
	}
}

// timing is implemented by this package's limiters so that WaitAll uses
// their injected clock and sleep.
type timing interface {
	clock() time.Time
	pause(ctx context.Context, d time.Duration) error
}

func timingOf(l Limiter) (func() time.Time, func(context.Context, time.Duration) error) {
	if t, ok := l.(timing); ok {
		return t.clock, t.pause
	}
	return time.Now, timeutil.Sleep
}

// hashTag returns the part of key Redis Cluster hashes: the text between
// the first '{' and the next '}' when non-empty, else the whole key.
func hashTag(key string) string {
	for i := 0; i < len(key); i++ {
		if key[i] == '{' {
			for j := i + 1; j < len(key); j++ {
				if key[j] == '}' {
					if j > i+1 {
						return key[i+1 : j]
					}
					return key
				}
			}
			return key
		}
	}
	return key
}

// keySlot returns the Redis Cluster hash slot of key: CRC16-XMODEM of its
// hash tag, modulo 16384.
func keySlot(key string) uint16 {
	tag := hashTag(key)
	var crc uint16
	for i := 0; i < len(tag); i++ {
		crc ^= uint16(tag[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc % 16384
}
