package ratelimit_test

import (
	"strconv"
	"testing"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/ratelimit"
	"github.com/chatscale/chatscale/ratelimit/ratelimittest"
)

func TestConformanceLocal(t *testing.T) {
	ratelimittest.Run(t, func(t *testing.T, l ratelimit.Limit) ratelimit.Limiter {
		lim, err := ratelimit.NewLocal(l, ratelimit.Config{})
		if err != nil {
			t.Fatal(err)
		}
		return lim
	})
}

func TestConformanceRedis(t *testing.T) {
	env := testutil.Redis(t)
	n := 0
	ratelimittest.Run(t, func(t *testing.T, l ratelimit.Limit) ratelimit.Limiter {
		n++ // a fresh prefix per limiter: every limiter starts empty
		return newRedis(t, env.Client, env.Prefix+strconv.Itoa(n)+":", l, ratelimit.Config{HashTag: "t"})
	})
}

// The fallback of a limiter failing open is itself a conforming limiter.
func TestConformanceRedisFailingOpen(t *testing.T) {
	ratelimittest.Run(t, func(t *testing.T, l ratelimit.Limit) ratelimit.Limiter {
		env := testutil.MiniredisEnv(t)
		env.Mini.SetError("ERR down")
		return newRedis(t, env.Client, env.Prefix, l, ratelimit.Config{})
	})
}
