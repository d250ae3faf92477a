package app_test

import (
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chatscale/chatscale/examples/server/app"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestFromEnvDefaults(t *testing.T) {
	t.Parallel()
	c, err := app.FromEnv(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.Port != app.DefaultPort || c.Model != app.DefaultModel || c.DrainTimeout != app.DefaultDrainTimeout ||
		c.LearnerTurnsPerMinute != app.DefaultLearnerTurnsPerMinute || c.AuthSecret != nil || c.RedisURL != "" ||
		c.MongoCollection != app.DefaultMongoCollection || c.LogLevel != slog.LevelInfo || c.DisableFallback {
		t.Errorf("FromEnv with nothing set = %+v", c)
	}
}

func TestFromEnvValues(t *testing.T) {
	t.Parallel()
	c, err := app.FromEnv(env(map[string]string{
		"PORT": "9090", "LISTEN_HOST": "127.0.0.1", "AUTH_SECRET": strings.Repeat("a", 40),
		"REDIS_SENTINEL_MASTER": "mymaster", "REDIS_SENTINEL_ADDRS": "10.0.0.1:26379, 10.0.0.2:26379",
		"MONGODB_URI": "mongodb://db:27017", "MONGODB_DATABASE": "lms", "MONGODB_COURSE_ID": "string",
		"OPENAI_BASE_URL": "http://127.0.0.1:11434/v1", "CHAT_MODEL": "llama3.1", "CHAT_FALLBACK": "off",
		"UPSTREAM_REQUESTS_PER_MINUTE": "10_000", "UPSTREAM_TOKENS_PER_MINUTE": "2000000",
		"LEARNER_TURNS_PER_MINUTE": "0", "DRAIN_TIMEOUT": "40s", "OFFLINE_MODEL_DELAY": "50ms",
		"OFFLINE_MODEL_DOWN": "true", "LOG_LEVEL": "debug",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Port != 9090 || c.Host != "127.0.0.1" || len(c.AuthSecret) != 40 || c.RedisSentinelMaster != "mymaster" ||
		!slices.Equal(c.RedisSentinelAddrs, []string{"10.0.0.1:26379", "10.0.0.2:26379"}) ||
		c.MongoDatabase != "lms" || !c.MongoCourseIDString || c.OpenAIBaseURL != "http://127.0.0.1:11434/v1" ||
		c.Model != "llama3.1" || !c.DisableFallback || c.UpstreamRequestsPerMinute != 10_000 ||
		c.UpstreamTokensPerMinute != 2_000_000 || c.LearnerTurnsPerMinute >= 0 || c.DrainTimeout != 40*time.Second ||
		c.OfflineDelay != 50*time.Millisecond || !c.OfflineDown || c.LogLevel != slog.LevelDebug {
		t.Errorf("FromEnv = %+v", c)
	}
}

// TestFromEnvErrors: a bad value is an error naming its variable, and
// never quotes a secret.
func TestFromEnvErrors(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		env  map[string]string
		name string
	}{
		{map[string]string{"PORT": "http"}, "PORT"},
		{map[string]string{"PORT": "70000"}, "PORT"},
		{map[string]string{"AUTH_SECRET": "short-secret"}, "AUTH_SECRET"},
		{map[string]string{"REDIS_URL": "localhost:6379"}, "REDIS_URL"},
		{map[string]string{"REDIS_URL": "redis://:pw@r:6379", "REDIS_CLUSTER_ADDRS": "a:1"}, "REDIS_CLUSTER_ADDRS"},
		{map[string]string{"REDIS_CLUSTER_ADDRS": "a:1,b"}, "REDIS_CLUSTER_ADDRS"},
		{map[string]string{"REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINEL_ADDRS"},
		{map[string]string{"REDIS_SENTINEL_ADDRS": "a:1"}, "REDIS_SENTINEL_MASTER"},
		{map[string]string{"MONGODB_URI": "mongodb://db"}, "MONGODB_DATABASE"},
		{map[string]string{"MONGODB_URI": "postgres://db", "MONGODB_DATABASE": "lms"}, "MONGODB_URI"},
		{map[string]string{"MONGODB_DATABASE": "lms"}, "MONGODB_URI"},
		{map[string]string{"MONGODB_COURSE_ID": "uuid"}, "MONGODB_COURSE_ID"},
		{map[string]string{"OPENAI_BASE_URL": "api.openai.com"}, "OPENAI_BASE_URL"},
		{map[string]string{"CHAT_FALLBACK": "maybe"}, "CHAT_FALLBACK"},
		{map[string]string{"UPSTREAM_REQUESTS_PER_MINUTE": "0"}, "UPSTREAM_REQUESTS_PER_MINUTE"},
		{map[string]string{"UPSTREAM_TOKENS_PER_MINUTE": "lots"}, "UPSTREAM_TOKENS_PER_MINUTE"},
		{map[string]string{"LEARNER_TURNS_PER_MINUTE": "-3"}, "LEARNER_TURNS_PER_MINUTE"},
		{map[string]string{"DRAIN_TIMEOUT": "25"}, "DRAIN_TIMEOUT"},
		{map[string]string{"DRAIN_TIMEOUT": "0s"}, "DRAIN_TIMEOUT"},
		{map[string]string{"OFFLINE_MODEL_DELAY": "-1s"}, "OFFLINE_MODEL_DELAY"},
		{map[string]string{"OFFLINE_MODEL_DOWN": "yes please"}, "OFFLINE_MODEL_DOWN"},
		{map[string]string{"LOG_LEVEL": "loud"}, "LOG_LEVEL"},
	} {
		_, err := app.FromEnv(env(c.env))
		var ee *app.EnvError
		if !errors.As(err, &ee) || ee.Var != c.name || !strings.HasPrefix(err.Error(), c.name+": ") {
			t.Errorf("FromEnv(%v) = %v, want an error naming %s", c.env, err, c.name)
			continue
		}
		if s := c.env["AUTH_SECRET"]; s != "" && strings.Contains(err.Error(), s) {
			t.Errorf("the error quotes the secret: %v", err)
		}
		if strings.Contains(err.Error(), ":pw@") {
			t.Errorf("the error quotes a password: %v", err)
		}
	}

	// Several bad values: every one is named.
	_, err := app.FromEnv(env(map[string]string{"PORT": "x", "LOG_LEVEL": "y"}))
	if err == nil || !strings.Contains(err.Error(), "PORT") || !strings.Contains(err.Error(), "LOG_LEVEL") {
		t.Errorf("two bad values: %v", err)
	}
}
