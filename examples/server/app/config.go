package app

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Config is the server's configuration. The zero Config runs everything
// embedded: Redis in process, the sample transcripts, the offline model,
// anonymous learners. FromEnv fills it from environment variables.
type Config struct {
	// Port and Host are where the server listens; Port 0 picks a free
	// port, an empty Host every interface. Env: PORT (default 8080),
	// LISTEN_HOST.
	Port int
	Host string

	// AuthSecret signs and checks the learners' bearer tokens (HMAC-SHA256).
	// Empty: anonymous learners, each with a random ID in a cookie. Env:
	// AUTH_SECRET, at least 32 bytes.
	AuthSecret []byte

	// Redis: at most one of RedisURL, RedisClusterAddrs and
	// (RedisSentinelMaster with RedisSentinelAddrs). None: a Redis server
	// embedded in the process (miniredis). The job queue lives there too. RedisPassword is the password
	// of a Cluster or Sentinel setup (a URL carries its own). Env:
	// REDIS_URL, REDIS_CLUSTER_ADDRS, REDIS_SENTINEL_MASTER,
	// REDIS_SENTINEL_ADDRS, REDIS_PASSWORD.
	RedisURL            string
	RedisClusterAddrs   []string
	RedisSentinelMaster string
	RedisSentinelAddrs  []string
	RedisPassword       string

	// MongoDB holds the transcripts when MongoURI is set; otherwise the
	// built-in sample transcripts answer. MongoCourseIDString says course
	// IDs are stored as strings rather than ObjectIDs. Env: MONGODB_URI,
	// MONGODB_DATABASE, MONGODB_COLLECTION (default "transcripts"),
	// MONGODB_COURSE_ID ("objectid", the default, or "string").
	MongoURI            string
	MongoDatabase       string
	MongoCollection     string
	MongoCourseIDString bool

	// OpenAIAPIKey and OpenAIBaseURL select a real OpenAI-compatible API
	// (either one set); neither: the offline model. Model is the model
	// name. Env: OPENAI_API_KEY, OPENAI_BASE_URL (default
	// https://api.openai.com/v1), CHAT_MODEL (default gpt-4o-mini).
	OpenAIAPIKey  string
	OpenAIBaseURL string
	Model         string
	// DisableFallback answers 503 when the upstream cannot be used,
	// instead of the fallback reply. Env: CHAT_FALLBACK=off.
	DisableFallback bool

	// UpstreamRequestsPerMinute and UpstreamTokensPerMinute are the
	// budgets every instance shares; LearnerTurnsPerMinute is each
	// learner's quota (negative: none). Zero means the default. Env:
	// UPSTREAM_REQUESTS_PER_MINUTE (500), UPSTREAM_TOKENS_PER_MINUTE
	// (200000), LEARNER_TURNS_PER_MINUTE (10; 0 disables the quota).
	UpstreamRequestsPerMinute int
	UpstreamTokensPerMinute   int
	LearnerTurnsPerMinute     int
	// ExpectedInstances is how many instances share the upstream budgets:
	// while Redis fails, each answers from a local budget of the limit
	// divided by it. Zero means 1. Env: EXPECTED_INSTANCES.
	ExpectedInstances int
	// UpstreamMaxWait bounds a turn's wait for the shared budgets
	// (chat.Config.MaxBudgetWait): past it the learner gets the fallback
	// reply (or 503) at once, with the time to come back. Zero means 5 s;
	// negative means until the turn's deadline. Env: UPSTREAM_MAX_WAIT.
	UpstreamMaxWait time.Duration

	// DrainTimeout bounds the graceful shutdown. Zero means 25 s. Env:
	// DRAIN_TIMEOUT.
	DrainTimeout time.Duration

	// OfflineDelay is the offline model's pause between two words of a
	// reply; OfflineDown makes it answer 503 to every request. Env:
	// OFFLINE_MODEL_DELAY, OFFLINE_MODEL_DOWN.
	OfflineDelay time.Duration
	OfflineDown  bool

	// LogLevel is the level of the server's log. Env: LOG_LEVEL (debug,
	// info, warn, error; default info).
	LogLevel slog.Level
}

// Defaults of Config.
const (
	DefaultPort                      = 8080
	DefaultModel                     = "gpt-4o-mini"
	DefaultOpenAIBaseURL             = "https://api.openai.com/v1"
	DefaultMongoCollection           = "transcripts"
	DefaultUpstreamRequestsPerMinute = 500
	DefaultUpstreamTokensPerMinute   = 200_000
	DefaultLearnerTurnsPerMinute     = 10
	DefaultUpstreamMaxWait           = 5 * time.Second
	DefaultDrainTimeout              = 25 * time.Second
	// MinAuthSecretBytes is the shortest AUTH_SECRET accepted.
	MinAuthSecretBytes = 32
)

// EnvError is a bad environment variable: FromEnv names the variable and
// says what is wrong, never echoing a secret.
type EnvError struct {
	Var    string
	Reason string
}

func (e *EnvError) Error() string { return e.Var + ": " + e.Reason }

// FromEnv reads the configuration from getenv (os.Getenv in main). Every
// variable is optional; a bad value is an *EnvError naming it (several
// are joined).
func FromEnv(getenv func(string) string) (Config, error) {
	var (
		c    Config
		errs []error
	)
	bad := func(name, format string, args ...any) {
		errs = append(errs, &EnvError{Var: name, Reason: fmt.Sprintf(format, args...)})
	}
	get := func(name string) string { return strings.TrimSpace(getenv(name)) }
	count := func(name string, def, minimum int) int {
		v := get(name)
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(strings.ReplaceAll(v, "_", ""))
		if err != nil || n < minimum {
			bad(name, "%q is not a whole number of at least %d", v, minimum)
			return def
		}
		return n
	}
	duration := func(name string, def time.Duration) time.Duration {
		v := get(name)
		if v == "" {
			return def
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			bad(name, "%q is not a duration such as 250ms or 30s", v)
			return def
		}
		return d
	}
	boolean := func(name string) bool {
		v := get(name)
		switch strings.ToLower(v) {
		case "", "0", "false", "no", "off":
			return false
		case "1", "true", "yes", "on":
			return true
		}
		bad(name, "%q is not one of true, false, 1, 0, on, off", v)
		return false
	}
	list := func(name string) []string {
		var out []string
		for a := range strings.SplitSeq(get(name), ",") {
			if a = strings.TrimSpace(a); a != "" {
				out = append(out, a)
			}
		}
		return out
	}

	c.Port = count("PORT", DefaultPort, 0)
	if c.Port > 65535 {
		bad("PORT", "%d is not a TCP port", c.Port)
	}
	c.Host = get("LISTEN_HOST")

	if s := getenv("AUTH_SECRET"); s != "" {
		if len(s) < MinAuthSecretBytes {
			bad("AUTH_SECRET", "%d bytes; use at least %d random bytes (openssl rand -hex 32)", len(s), MinAuthSecretBytes)
		}
		c.AuthSecret = []byte(s)
	}

	c.RedisURL = get("REDIS_URL")
	c.RedisClusterAddrs = list("REDIS_CLUSTER_ADDRS")
	c.RedisSentinelMaster = get("REDIS_SENTINEL_MASTER")
	c.RedisSentinelAddrs = list("REDIS_SENTINEL_ADDRS")
	c.RedisPassword = getenv("REDIS_PASSWORD")
	var set []string
	if c.RedisURL != "" {
		set = append(set, "REDIS_URL")
		if u, err := url.Parse(c.RedisURL); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix") || (u.Scheme != "unix" && u.Host == "") {
			bad("REDIS_URL", "not a redis://host:port/db, rediss:// or unix:// URL")
		}
	}
	if len(c.RedisClusterAddrs) > 0 {
		set = append(set, "REDIS_CLUSTER_ADDRS")
	}
	switch {
	case c.RedisSentinelMaster != "" && len(c.RedisSentinelAddrs) == 0:
		bad("REDIS_SENTINEL_ADDRS", "empty, but REDIS_SENTINEL_MASTER is set: list the Sentinels as host:port,host:port")
	case c.RedisSentinelMaster == "" && len(c.RedisSentinelAddrs) > 0:
		bad("REDIS_SENTINEL_MASTER", "empty, but REDIS_SENTINEL_ADDRS is set: name the master the Sentinels watch")
	case c.RedisSentinelMaster != "":
		set = append(set, "REDIS_SENTINEL_MASTER")
	}
	if len(set) > 1 {
		bad(set[1], "set together with %s: choose one Redis setup", set[0])
	}
	for _, v := range [...]struct {
		name  string
		addrs []string
	}{{"REDIS_CLUSTER_ADDRS", c.RedisClusterAddrs}, {"REDIS_SENTINEL_ADDRS", c.RedisSentinelAddrs}} {
		for _, a := range v.addrs {
			if i := strings.LastIndexByte(a, ':'); i <= 0 || i == len(a)-1 {
				bad(v.name, "%q is not host:port", a)
			}
		}
	}

	c.MongoURI = get("MONGODB_URI")
	c.MongoDatabase = get("MONGODB_DATABASE")
	c.MongoCollection = get("MONGODB_COLLECTION")
	if c.MongoCollection == "" {
		c.MongoCollection = DefaultMongoCollection
	}
	switch k := strings.ToLower(get("MONGODB_COURSE_ID")); k {
	case "", "objectid":
	case "string":
		c.MongoCourseIDString = true
	default:
		bad("MONGODB_COURSE_ID", "%q is neither objectid nor string", k)
	}
	if c.MongoURI != "" {
		if !strings.HasPrefix(c.MongoURI, "mongodb://") && !strings.HasPrefix(c.MongoURI, "mongodb+srv://") {
			bad("MONGODB_URI", "not a mongodb:// or mongodb+srv:// URI")
		}
		if c.MongoDatabase == "" {
			bad("MONGODB_DATABASE", "empty, but MONGODB_URI is set: name the database that holds the transcripts")
		}
	} else if c.MongoDatabase != "" {
		bad("MONGODB_URI", "empty, but MONGODB_DATABASE is set")
	}

	c.OpenAIAPIKey = getenv("OPENAI_API_KEY")
	c.OpenAIBaseURL = get("OPENAI_BASE_URL")
	if c.OpenAIBaseURL != "" {
		if u, err := url.Parse(c.OpenAIBaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("OPENAI_BASE_URL", "%q is not an http:// or https:// URL", c.OpenAIBaseURL)
		}
	}
	c.Model = get("CHAT_MODEL")
	if c.Model == "" {
		c.Model = DefaultModel
	}
	switch v := strings.ToLower(get("CHAT_FALLBACK")); v {
	case "", "on", "true", "1":
	case "off", "false", "0":
		c.DisableFallback = true
	default:
		bad("CHAT_FALLBACK", "%q is neither on nor off", v)
	}

	c.UpstreamRequestsPerMinute = count("UPSTREAM_REQUESTS_PER_MINUTE", DefaultUpstreamRequestsPerMinute, 1)
	c.UpstreamTokensPerMinute = count("UPSTREAM_TOKENS_PER_MINUTE", DefaultUpstreamTokensPerMinute, 1)
	c.LearnerTurnsPerMinute = count("LEARNER_TURNS_PER_MINUTE", DefaultLearnerTurnsPerMinute, 0)
	if c.LearnerTurnsPerMinute == 0 {
		c.LearnerTurnsPerMinute = -1
	}
	c.ExpectedInstances = count("EXPECTED_INSTANCES", 1, 1)
	c.UpstreamMaxWait = duration("UPSTREAM_MAX_WAIT", DefaultUpstreamMaxWait)
	if c.UpstreamMaxWait == 0 {
		c.UpstreamMaxWait = -1
	}
	c.DrainTimeout = duration("DRAIN_TIMEOUT", DefaultDrainTimeout)
	if c.DrainTimeout == 0 {
		bad("DRAIN_TIMEOUT", "zero: give the turns in flight some time, such as 25s")
	}
	c.OfflineDelay = duration("OFFLINE_MODEL_DELAY", 0)
	c.OfflineDown = boolean("OFFLINE_MODEL_DOWN")

	switch v := strings.ToLower(get("LOG_LEVEL")); v {
	case "", "info":
		c.LogLevel = slog.LevelInfo
	case "debug":
		c.LogLevel = slog.LevelDebug
	case "warn", "warning":
		c.LogLevel = slog.LevelWarn
	case "error":
		c.LogLevel = slog.LevelError
	default:
		bad("LOG_LEVEL", "%q is not one of debug, info, warn, error", v)
	}
	return c, errors.Join(errs...)
}

// withDefaults fills the zero fields of a Config built in code.
func (c Config) withDefaults() Config {
	if c.Model == "" {
		c.Model = DefaultModel
	}
	if c.MongoCollection == "" {
		c.MongoCollection = DefaultMongoCollection
	}
	if c.UpstreamRequestsPerMinute == 0 {
		c.UpstreamRequestsPerMinute = DefaultUpstreamRequestsPerMinute
	}
	if c.UpstreamTokensPerMinute == 0 {
		c.UpstreamTokensPerMinute = DefaultUpstreamTokensPerMinute
	}
	if c.LearnerTurnsPerMinute == 0 {
		c.LearnerTurnsPerMinute = DefaultLearnerTurnsPerMinute
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.ExpectedInstances == 0 {
		c.ExpectedInstances = 1
	}
	if c.UpstreamMaxWait == 0 {
		c.UpstreamMaxWait = DefaultUpstreamMaxWait
	}
	return c
}

// offlineModel reports whether the built-in model answers.
func (c Config) offlineModel() bool { return c.OpenAIAPIKey == "" && c.OpenAIBaseURL == "" }
