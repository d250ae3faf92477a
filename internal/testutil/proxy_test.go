package testutil_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatscale/chatscale/internal/testutil"
)

// patient sets socket timeouts far beyond any the tests wait for, so that
// only the proxy or a ctx ends a call.
func patient(o *redis.Options) {
	o.ReadTimeout, o.WriteTimeout, o.DialTimeout = time.Minute, time.Minute, time.Minute
	o.MaxRetries = -1
	o.ContextTimeoutEnabled = true
}

func TestProxyForwards(t *testing.T) {
	pe := testutil.RedisBehindProxy(t)
	rdb := pe.NewClient(patient)
	ctx := t.Context()
	k := pe.Env.Prefix + "k"
	if err := rdb.Set(ctx, k, "v", 0).Err(); err != nil {
		t.Fatalf("SET through the proxy: %v", err)
	}
	if got, err := pe.Env.Client.Get(ctx, k).Result(); err != nil || got != "v" {
		t.Fatalf("the server holds %q, %v; want v", got, err)
	}
}

func TestProxyDelaysReplies(t *testing.T) {
	pe := testutil.RedisBehindProxy(t)
	rdb := pe.NewClient(func(o *redis.Options) {
		patient(o)
		o.ReadTimeout = 100 * time.Millisecond
	})
	ctx := t.Context()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING without delay: %v", err)
	}
	pe.Proxy.SetDelay(time.Second)
	err := rdb.Ping(ctx).Err()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("PING delayed past the read timeout: err = %v, want a timeout", err)
	}
	pe.Proxy.SetDelay(0)
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING once the delay is gone: %v", err)
	}
}

func TestProxyHangsAndHeals(t *testing.T) {
	pe := testutil.RedisBehindProxy(t)
	rdb := pe.NewClient(patient)
	ctx := t.Context()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	pe.Proxy.Hang()

	// A bounded call ends with its ctx: nothing came back.
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	err := rdb.Ping(short).Err()
	cancel()
	if err == nil {
		t.Fatal("PING answered through a hung proxy")
	}

	// A call made during the hang does not reach the server until Heal.
	k := pe.Env.Prefix + "held"
	done := make(chan error, 1)
	go func() { done <- rdb.Set(ctx, k, "v", 0).Err() }()
	held := testutil.Eventually(300*time.Millisecond, func() bool {
		n, err := pe.Env.Client.Exists(ctx, k).Result()
		return err != nil || n != 0
	})
	if held {
		t.Fatal("the server received a SET sent while the proxy hung")
	}
	select {
	case err := <-done:
		t.Fatalf("SET returned during the hang: %v", err)
	default:
	}
	pe.Proxy.Heal()
	if err := <-done; err != nil {
		t.Fatalf("SET held by the hang, after Heal: %v", err)
	}
	if n, err := pe.Env.Client.Exists(ctx, k).Result(); err != nil || n != 1 {
		t.Fatalf("after Heal the server has %d keys, %v; want the held SET", n, err)
	}
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after Heal: %v", err)
	}
}

func TestProxyCloseReleasesHeldConnections(t *testing.T) {
	pe := testutil.RedisBehindProxy(t)
	rdb := pe.NewClient(patient)
	ctx := t.Context()
	pe.Proxy.Hang()
	done := make(chan error, 1)
	go func() { done <- rdb.Ping(ctx).Err() }()
	pe.Proxy.Close()
	if err := <-done; err == nil {
		t.Fatal("PING held by a closed proxy succeeded")
	}
}
