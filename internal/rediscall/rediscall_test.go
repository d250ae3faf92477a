package rediscall_test

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/chatscale/chatscale/internal/rediscall"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// hungServer accepts connections and never answers: a Redis that stopped.
func hungServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

// client dials addr with socket timeouts far beyond any bound the tests
// set, so that a call that returned early was ended by the Bound.
func client(t *testing.T, addr string, honour bool) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{
		Addr: addr, ReadTimeout: time.Minute, WriteTimeout: time.Minute, DialTimeout: time.Minute,
		MaxRetries: -1, ContextTimeoutEnabled: honour, PoolSize: 2,
	})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

func get(rdb redis.UniversalClient) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) { return rdb.Get(ctx, "k").Result() }
}

func TestDoEndsAHungCallAtTheBound(t *testing.T) {
	addr := hungServer(t)
	for _, honour := range []bool{false, true} {
		rdb := client(t, addr, honour)
		b := rediscall.New(50 * time.Millisecond)
		_, err := rediscall.Do(context.Background(), b, get(rdb))
		var te *rediscall.TimeoutError
		if !errors.As(err, &te) || te.After != 50*time.Millisecond {
			t.Fatalf("ContextTimeoutEnabled=%v: err = %v, want a *TimeoutError after 50ms", honour, err)
		}
		if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, os.ErrDeadlineExceeded) && !te.Timeout() {
			t.Fatalf("err = %v: want it to match context.DeadlineExceeded and report Timeout", err)
		}
	}
}

func TestDoReturnsTheCallersCtxErrorWhenItEndsFirst(t *testing.T) {
	addr := hungServer(t)
	for _, honour := range []bool{false, true} {
		rdb := client(t, addr, honour)
		b := rediscall.New(time.Minute)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		_, err := rediscall.Do(ctx, b, get(rdb))
		cancel()
		if err != context.DeadlineExceeded {
			t.Fatalf("ContextTimeoutEnabled=%v: err = %v, want ctx's own error", honour, err)
		}
	}
}

// slowServer answers GET with the bulk string "v", each answer held until
// release is closed (a Redis whose reply is on its way), HELLO with an
// unknown-command error (so the client speaks RESP2 without it) and
// anything else with +OK. received gets a value when a GET has
// arrived.
func slowServer(t *testing.T) (addr string, received chan struct{}, release chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	received, release = make(chan struct{}, 16), make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					reply := "+OK\r\n"
					switch cmd := strings.ToLower(string(buf[:n])); {
					case strings.Contains(cmd, "hello"):
						reply = "-ERR unknown command 'HELLO'\r\n"
					case strings.Contains(cmd, "get"):
						received <- struct{}{}
						<-release
						reply = "$1\r\nv\r\n"
					}
					if _, err := c.Write([]byte(reply)); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		select {
		case <-release:
		default:
			close(release)
		}
		wg.Wait()
	})
	return ln.Addr().String(), received, release
}

// A ctx cancelled while the command is in Redis does not abandon it: Do
// returns Redis' answer, so that the caller knows what took effect.
func TestDoWaitsForTheAnswerOfACancelledCall(t *testing.T) {
	addr, received, release := slowServer(t)
	rdb := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, DisableIdentity: true, MaxRetries: -1,
		ReadTimeout: time.Minute, WriteTimeout: time.Minute, ContextTimeoutEnabled: true})
	t.Cleanup(func() { rdb.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	type answer struct {
		v   string
		err error
	}
	got := make(chan answer, 1)
	go func() {
		v, err := rediscall.Do(ctx, rediscall.New(time.Minute), get(rdb))
		got <- answer{v, err}
	}()
	<-received
	cancel()
	close(release)
	if a := <-got; a.err != nil || a.v != "v" {
		t.Fatalf("cancelled while Redis held the answer: got %q, %v; want Redis' answer", a.v, a.err)
	}

	// A ctx ended before the call sends nothing; one cancelled during a
	// call Redis never answers ends after CancelGrace.
	hung := client(t, hungServer(t), false)
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if _, err := rediscall.Do(ctx, rediscall.New(time.Minute), get(hung)); err != context.Canceled {
		t.Fatalf("ctx ended before the call: %v, want context.Canceled", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(10*time.Millisecond, cancel)
	if _, err := rediscall.Do(ctx, rediscall.New(time.Minute), get(hung)); err != context.Canceled {
		t.Fatalf("cancelled during a hung call: %v, want context.Canceled after the grace", err)
	}
	if _, err := rediscall.Do(context.Background(), rediscall.New(-1), func(context.Context) (int, error) { return 1, nil }); err != nil {
		t.Fatal(err)
	}
}

func TestDoPassesResultsAndErrorsThrough(t *testing.T) {
	mr := miniredis.RunT(t)
	if err := mr.Set("k", "v"); err != nil {
		t.Fatal(err)
	}
	for _, honour := range []bool{false, true} {
		rdb := client(t, mr.Addr(), honour)
		for _, timeout := range []time.Duration{-1, 0, time.Minute} {
			b := rediscall.New(timeout)
			v, err := rediscall.Do(context.Background(), b, get(rdb))
			if err != nil || v != "v" {
				t.Fatalf("honour=%v timeout=%v: got %q, %v", honour, timeout, v, err)
			}
			_, err = rediscall.Do(context.Background(), b, func(ctx context.Context) (string, error) {
				return rdb.Get(ctx, "missing").Result()
			})
			if err != redis.Nil {
				t.Fatalf("honour=%v timeout=%v: err = %v, want redis.Nil unchanged", honour, timeout, err)
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	called := false
	_, err := rediscall.Do(ctx, rediscall.Bound{}, func(context.Context) (int, error) { called = true; return 0, nil })
	if err != context.Canceled || called {
		t.Fatalf("ended ctx: err = %v, called = %v; want context.Canceled without a call", err, called)
	}
}

func TestNewDefaults(t *testing.T) {
	if got := rediscall.New(0).Timeout(); got != rediscall.DefaultTimeout {
		t.Fatalf("zero timeout: bound %v, want %v", got, rediscall.DefaultTimeout)
	}
	if got := rediscall.New(-1).Timeout(); got != 0 {
		t.Fatalf("negative timeout: bound %v, want none", got)
	}
}

func BenchmarkDo(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bound := rediscall.New(0)
	call := func(context.Context) (int, error) { return 1, nil }
	b.Run("direct", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := call(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("bounded", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := rediscall.Do(ctx, bound, call); err != nil {
				b.Fatal(err)
			}
		}
	})
}
