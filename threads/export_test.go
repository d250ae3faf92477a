package threads

// ScriptKeysForTest returns the KEYS of open.lua and append.lua for the
// pair (user, course) and the pair's <uh><ch>, for the benchmark that
// runs the previous versions of the scripts beside the current ones.
func ScriptKeysForTest(s *RedisStore, user, course string) (keys []string, pair string) {
	k := s.keys(digest('u', user), digest('c', course))
	return k.all(), k.uh + k.ch
}

// EncodeMessageForTest encodes m as the list holds it.
func EncodeMessageForTest(m Message, now int64) string { return encodeMessage(m, now) }
