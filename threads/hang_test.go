package threads_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/chatscale/chatscale/internal/testutil"
	"github.com/chatscale/chatscale/threads"
)

// silentListener accepts connections on loopback and never answers, as a
// Redis that hangs (a stopped process, a network stall) would. It closes
// the connections and stops at cleanup.
func silentListener(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return l.Addr().String()
}

// storeCalls are every RedisStore method, on a thread ID of the right
// shape.
func storeCalls(st *threads.RedisStore) map[string]func(ctx context.Context) error {
	const id = "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBB.CCCCCCCCCCCCCCCCCCCCCC"
	msg := threads.Message{Role: threads.RoleUser, Content: "x", ID: "m1"}
	return map[string]func(ctx context.Context) error{
		"GetOrCreate": func(ctx context.Context) error { _, err := st.GetOrCreate(ctx, "u", "c"); return err },
		"Get":         func(ctx context.Context) error { _, err := st.Get(ctx, id); return err },
		"Open": func(ctx context.Context) error {
			_, err := st.Open(ctx, threads.OpenRequest{UserID: "u", CourseID: "c", VideoURL: "v", HistoryLimit: 5})
			return err
		},
		"TrackVideo":  func(ctx context.Context) error { _, err := st.TrackVideo(ctx, id, "v"); return err },
		"Append":      func(ctx context.Context) error { return st.Append(ctx, id, msg) },
		"History":     func(ctx context.Context) error { _, err := st.History(ctx, id, 0); return err },
		"Delete":      func(ctx context.Context) error { return st.Delete(ctx, id) },
		"ForgetUser":  func(ctx context.Context) error { _, err := st.ForgetUser(ctx, "u"); return err },
		"Active":      func(ctx context.Context) error { _, err := st.Active(ctx, time.Minute); return err },
		"Find":        func(ctx context.Context) error { _, err := st.Find(ctx, "u", "c"); return err },
		"LoadScripts": func(ctx context.Context) error { return st.LoadScripts(ctx) },
	}
}

// TestRedisHungServer checks that every RedisStore method returns when
// Redis stops answering, through a client whose own timeouts would never
// end the call (no read or write timeout, ctx deadlines ignored): with
// ErrUnavailable (a timeout) when the store's RedisTimeout passes first,
// with ctx's error when ctx ends first; with and without WaitReplicas; and
// that no goroutine is left once the client is closed. The hung Redis is
// a listener that never answers, and a real redis-server frozen with
// SIGSTOP.
func TestRedisHungServer(t *testing.T) {
	hung := map[string]func(t *testing.T) string{
		"silent listener": silentListener,
		"SIGSTOP": func(t *testing.T) string {
			p := testutil.StartRedis(t)
			p.Stop()
			return p.Addr
		},
	}
	for name, addrOf := range hung {
		t.Run(name, func(t *testing.T) {
			addr := addrOf(t)
			baseline := goleak.IgnoreCurrent()
			for _, wait := range []int{0, 1} {
				rdb := redis.NewClient(&redis.Options{Addr: addr, ReadTimeout: -1, WriteTimeout: -1, MaxRetries: -1})
				bound, err := threads.NewRedis(rdb, threads.Config{RedisTimeout: 50 * time.Millisecond, WaitReplicas: wait, WaitTimeout: time.Millisecond})
				if err != nil {
					t.Fatal(err)
				}
				unbound, err := threads.NewRedis(rdb, threads.Config{RedisTimeout: -1, WaitReplicas: wait})
				if err != nil {
					t.Fatal(err)
				}
				// The bound passes first: ErrUnavailable, a timeout.
				for call, fn := range storeCalls(bound) {
					err := returns(t, call, func() error { return fn(context.Background()) })
					var te interface{ Timeout() bool }
					if !errors.Is(err, threads.ErrUnavailable) || !errors.As(err, &te) || !te.Timeout() {
						t.Errorf("WaitReplicas %d: %s past RedisTimeout: err = %v; want ErrUnavailable wrapping a timeout", wait, call, err)
					}
				}
				// ctx ends first: ctx's error, not ErrUnavailable.
				for call, fn := range storeCalls(unbound) {
					err := returns(t, call, func() error {
						ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
						defer cancel()
						return fn(ctx)
					})
					if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, threads.ErrUnavailable) {
						t.Errorf("WaitReplicas %d: %s past its ctx deadline: err = %v; want ctx's error", wait, call, err)
					}
					err = returns(t, call, func() error {
						ctx, cancel := context.WithCancel(context.Background())
						time.AfterFunc(20*time.Millisecond, cancel)
						return fn(ctx)
					})
					if !errors.Is(err, context.Canceled) || errors.Is(err, threads.ErrUnavailable) {
						t.Errorf("WaitReplicas %d: %s canceled: err = %v; want context.Canceled", wait, call, err)
					}
				}
				if err := rdb.Close(); err != nil {
					t.Fatal(err)
				}
			}
			// The calls the bound abandoned end with the client's connections.
			goleak.VerifyNone(t, baseline)
		})
	}
}

// returns runs call and returns its error, failing the test if it has
// not returned after 30 s: without the store's bound, or with a ctx
// ignored, it would never return.
func returns(t *testing.T, name string, call func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- call() }()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("%s never returned", name)
		return nil
	}
}
