package contextcache

// RedisKeys exposes the key builder to the tests: the value and lock keys
// of (courseID, videoURL).
func RedisKeys(c *Cache, courseID, videoURL string) (value, lock string) {
	return c.redisKeys(key{course: courseID, video: videoURL})
}
