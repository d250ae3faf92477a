// Package scripts loads the packages' Lua scripts into Redis one way, so
// that every LoadScripts reaches every server the client can send a script
// to.
package scripts

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// Load loads every script into the script cache of every server rdb
// reaches. A *redis.ClusterClient already sends SCRIPT LOAD to every node;
// a *redis.Ring sends a keyless command to one shard only, so each shard is
// loaded in turn. It returns the first error.
func Load(ctx context.Context, rdb redis.UniversalClient, scs ...*redis.Script) error {
	if ring, ok := rdb.(*redis.Ring); ok {
		return ring.ForEachShard(ctx, func(ctx context.Context, c *redis.Client) error {
			return load(ctx, c, scs)
		})
	}
	return load(ctx, rdb, scs)
}

func load(ctx context.Context, c redis.Scripter, scs []*redis.Script) error {
	for _, sc := range scs {
		if err := sc.Load(ctx, c).Err(); err != nil {
			return err
		}
	}
	return nil
}
