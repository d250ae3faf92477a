package threads

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// LoadScripts loads the Redis store's scripts into the script cache of
// every server rdb reaches (every shard of a Cluster), so that tests
// counting round trips see no EVALSHA falling back to EVAL.
func LoadScripts(ctx context.Context, rdb redis.UniversalClient) error {
	for _, s := range []*redis.Script{openScript, appendScript, readScript, deleteScript, forgetScript} {
		if err := s.Load(ctx, rdb).Err(); err != nil {
			return err
		}
	}
	return nil
}
